/**
 * What the configuration needs to know before its schema is loaded: the CONDUCTOR_* variables
 * that are not keys, and the default socket folder. A client command reads them to find its
 * socket without loading the schema (zod) and the YAML parser.
 */

/**
 * CONDUCTOR_* variables that are not configuration keys, and so are not refused: the CLI's
 * CONDUCTOR_SOCKET (which Conductor a client command talks to), what an AgentHost sets in every
 * agent's environment (a `conductor` command run by an agent sees them), the agent image build's
 * CONDUCTOR_IMAGE, bin/vendor.js's CONDUCTOR_VENDOR_BUNDLE, and the test suites' own.
 */
export const NON_CONFIG_VARIABLES: ReadonlySet<string> = new Set([
  "CONDUCTOR_SOCKET",
  "CONDUCTOR_AGENT_ID",
  "CONDUCTOR_AGENT_DIR",
  "CONDUCTOR_TASK_ID",
  "CONDUCTOR_MODEL_SOCKET",
  "CONDUCTOR_MODEL_PORT",
  "CONDUCTOR_RUN_LIFELINE",
  "CONDUCTOR_RUN_LIFELINE_IDLE_MS",
  "CONDUCTOR_SANDBOX",
  "CONDUCTOR_IMAGE",
  "CONDUCTOR_VENDOR_BUNDLE",
  "CONDUCTOR_TEST",
  "CONDUCTOR_TEST_RUNTIMES",
  "CONDUCTOR_TEST_IMAGE",
  "CONDUCTOR_TEST_PODMAN_SOCKET",
]);

/** communication.socket_dir when nothing sets it, relative to the working folder. */
export const DEFAULT_SOCKET_DIR = ".conductor/run";

/**
 * Whether an environment sets configuration keys (or tries to: an unknown CONDUCTOR_* name is
 * an error of the configuration), i.e. has a CONDUCTOR_* variable not in NON_CONFIG_VARIABLES.
 */
export function setsConfigKeys(env: Record<string, string | undefined>): boolean {
  return Object.entries(env).some(
    ([name, value]) =>
      name.startsWith("CONDUCTOR_") && value !== undefined && !NON_CONFIG_VARIABLES.has(name),
  );
}
