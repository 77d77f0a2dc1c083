// The console's access token: handed over once in the URL `conductor up` prints
// (`?token=…`), then kept in the origin's localStorage (so a task opened in a new tab needs
// no token again; a restarted Conductor's new token replaces it) and out of the address bar.

const KEY = "conductor.console.token";

/**
 * Takes `?token=` from the address (storing it and removing it from the address bar with
 * history.replaceState, so it is not bookmarked or shared by accident) and returns the
 * token this tab holds, or undefined when it has none.
 */
export function takeToken(
  location: Location,
  storage: Storage,
  history: History,
): string | undefined {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    storage.setItem(KEY, given);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", `${url.pathname}${url.search}${url.hash}`);
  }
  return storage.getItem(KEY) ?? undefined;
}
