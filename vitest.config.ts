import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: [
      "test/**/*.test.ts",
      "services/**/*.test.ts",
      "plugins/**/*.test.ts",
      "console/src/**/*.test.ts",
    ],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // End-to-end suites start real servers and CLIs; the machine has two cores.
    fileParallelism: false,
  },
});
