// The console's frame: navigation, the "no token" banner, the routes of its views, and the
// stats sampler the charts read (it samples while the console is open, whatever view shows).
import type { ComponentChildren } from "preact";
import { LocationProvider, Route, Router, useLocation } from "preact-iso";
import { useEffect, useErrorBoundary, useState } from "preact/hooks";
import type { Orchestrator } from "./api.ts";
import { ApiContext } from "./context.ts";
import { UNAUTHENTICATED } from "./errors.ts";
import { AgentsView } from "./views/agents.tsx";
import { ChartsView, StatsContext, useStatsSampler } from "./views/charts.tsx";
import { GroupView, GroupsView } from "./views/groups.tsx";
import { TaskView } from "./views/task.tsx";
import { TasksView } from "./views/tasks.tsx";

/** What App needs: the client and a hook for API refusals. */
export interface AppProps {
  api: Orchestrator;
  /** Registers the function to call when the API refuses the token. */
  onRefused: (f: () => void) => void;
}

/** The whole console. */
export function App({ api, onRefused }: AppProps) {
  // Shown once the API refuses a call: a tab without the token (over mutual TLS, off
  // loopback, there is none and none is needed).
  const [refused, setRefused] = useState(false);
  useEffect(() => onRefused(() => setRefused(true)), [onRefused]);
  const samples = useStatsSampler(api);
  return (
    <ApiContext.Provider value={api}>
      <StatsContext.Provider value={samples}>
        <LocationProvider>
          <header>
            <a class="brand" href="/">
              Conductor
            </a>
            <nav>
              <a href="/">Tasks</a>
              <a href="/agents">Agents &amp; nodes</a>
              <a href="/groups">Groups</a>
              <a href="/charts">Charts</a>
            </nav>
          </header>
          {refused && (
            <p class="banner error" role="alert" data-testid="unauthenticated">
              {UNAUTHENTICATED}
            </p>
          )}
          <main>
            <Pages />
          </main>
        </LocationProvider>
      </StatsContext.Provider>
    </ApiContext.Provider>
  );
}

/** The page the address names, with a fresh error boundary for each path. */
function Pages() {
  const { path } = useLocation();
  return (
    <PageOrError key={path}>
      <Router>
        <Route path="/" component={TasksView} />
        <Route path="/tasks" component={TasksView} />
        <Route path="/tasks/:id" component={TaskView} />
        <Route path="/agents" component={AgentsView} />
        <Route path="/groups" component={GroupsView} />
        <Route path="/groups/:id" component={GroupView} />
        <Route path="/charts" component={ChartsView} />
        <Route default component={NotFound} />
      </Router>
    </PageOrError>
  );
}

/**
 * Its page (ids in the address come decoded: the router decodes them), or what kept it from
 * showing: an address with a malformed %-escape (`/tasks/%zz`, which the router cannot decode)
 * or a page that failed, instead of a blank page.
 */
function PageOrError({ children }: { children: ComponentChildren }) {
  const error: unknown = useErrorBoundary()[0];
  if (!error) return <>{children}</>;
  return (
    <p class="error" role="alert">
      {error instanceof URIError
        ? "This address has a malformed %-escape, so it names no page."
        : `This page failed: ${error instanceof Error ? error.message : "unknown error"}`}{" "}
      <a href="/">Tasks</a>
    </p>
  );
}

function NotFound() {
  return (
    <p>
      No such page. <a href="/">Tasks</a>
    </p>
  );
}
