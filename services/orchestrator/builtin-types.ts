import type { ParamValue, TaskType } from "./task-types.ts";

/** Tools that read the workspace and change nothing. */
const READ_ONLY = ["Read", "Glob", "Grep", "LS"];
/** Tools that read and edit the workspace. */
const EDITING = ["Read", "Write", "Edit", "MultiEdit", "Glob", "Grep", "LS"];

const PATHS = {
  name: "paths",
  kind: "list",
  description: "files or folders to work on, relative to the workspace (default: all of it)",
} as const;

/** One line per given value, skipping those not given or empty. */
function lines(...parts: (string | false | undefined)[]): string {
  return parts.filter((p): p is string => typeof p === "string" && p !== "").join("\n\n");
}

function list(v: ParamValue | undefined): string | undefined {
  return Array.isArray(v) && v.length > 0 ? v.join(", ") : undefined;
}

/** The JSON Schema of code_review's answer: `{"findings":[{file, line, severity, message}]}`. */
export const FINDINGS_SCHEMA = {
  type: "object",
  properties: {
    findings: {
      type: "array",
      items: {
        type: "object",
        properties: {
          file: { type: "string", minLength: 1, description: "path relative to the workspace" },
          line: { type: "integer", minimum: 0, description: "1-based; 0 for the whole file" },
          severity: { type: "string", enum: ["info", "warning", "error"] },
          message: { type: "string", minLength: 1, description: "what is wrong, and the fix" },
        },
        required: ["file", "line", "severity", "message"],
        additionalProperties: false,
      },
    },
    summary: { type: "string", description: "the review in a few sentences" },
  },
  required: ["findings"],
  additionalProperties: false,
} as const;

/** generic: the prompt as given, the agent's default tools, no schema (what every task was). */
const generic: TaskType = {
  name: "generic",
  description: "the prompt as given, with the agent's default tools and permission mode",
  prompt: ({ prompt }) => prompt,
};

const codeReview: TaskType = {
  name: "code_review",
  description:
    "reviews code without changing it; answers with findings (file, line, severity, message)",
  parameters: [
    {
      name: "focus",
      kind: "string",
      description: "what to look at above all, e.g. error handling",
    },
    { ...PATHS, description: "files or folders to review (default: the whole workspace)" },
  ],
  tools: READ_ONLY,
  permissionMode: "default",
  resultSchema: FINDINGS_SCHEMA,
  prompt: ({ prompt, params }) =>
    lines(
      "Review the code in this workspace. Do not change any file.",
      prompt,
      list(params["paths"]) && `Review only: ${list(params["paths"])}.`,
      typeof params["focus"] === "string" && `Focus above all on: ${params["focus"]}.`,
      "Report each problem as a finding: the file (a path relative to the workspace), the line (1-based; 0 when it concerns the whole file), the severity (info, warning or error) and a message saying what is wrong and how to fix it. Give the findings as your final structured answer, an empty list when there are none.",
    ),
};

const refactor: TaskType = {
  name: "refactor",
  description: "restructures code; by default keeps its behaviour as it is",
  parameters: [
    PATHS,
    {
      name: "keep_behaviour",
      kind: "boolean",
      description: "public interfaces and behaviour stay as they are",
      default: "true",
    },
  ],
  tools: EDITING,
  permissionMode: "acceptEdits",
  prompt: ({ prompt, params }) =>
    lines(
      "Refactor the code in this workspace.",
      prompt,
      list(params["paths"]) && `Change only: ${list(params["paths"])}.`,
      params["keep_behaviour"] === true &&
        "Keep its behaviour and public interfaces exactly as they are.",
      "End with a short account of what you changed and why.",
    ),
};

const testGeneration: TaskType = {
  name: "test_generation",
  description: "writes tests for existing code",
  parameters: [
    { ...PATHS, description: "the code to test (default: what has no tests)" },
    {
      name: "framework",
      kind: "string",
      description: "the test framework to use (default: the one the project uses)",
    },
  ],
  tools: EDITING,
  permissionMode: "acceptEdits",
  prompt: ({ prompt, params }) =>
    lines(
      "Write tests for the code in this workspace. Change no code outside the tests.",
      prompt,
      list(params["paths"]) && `Test: ${list(params["paths"])}.`,
      typeof params["framework"] === "string" && `Use ${params["framework"]}.`,
      "End with a list of the tests you wrote and what each covers.",
    ),
};

const analysis: TaskType = {
  name: "analysis",
  description: "studies code or data and reports, changing nothing",
  parameters: [PATHS],
  tools: READ_ONLY,
  permissionMode: "default",
  prompt: ({ prompt, params }) =>
    lines(
      prompt,
      list(params["paths"]) && `Look at: ${list(params["paths"])}.`,
      "Do not change any file; report what you found.",
    ),
};

/** The built-in task types, registered first (loadTaskTypes). */
export const BUILTIN_TASK_TYPES: readonly TaskType[] = [
  generic,
  codeReview,
  refactor,
  testGeneration,
  analysis,
];
