// The console's entry: takes the token from the address, builds the API client, shows App.
import { render } from "preact";
import { orchestrator } from "./api.ts";
import { App } from "./app.tsx";
import { takeToken } from "./token.ts";
import "uplot/dist/uPlot.min.css";
import "./style.css";

const token = takeToken(window.location, window.localStorage, window.history);
const root = document.getElementById("app");
if (root) {
  let refused = () => {};
  const api = orchestrator(window.location.origin, token, () => refused());
  render(<App api={api} onRefused={(f) => (refused = f)} />, root);
}
