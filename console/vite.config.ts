// The console's build: `npm run build:console` (vite build console) writes console/dist/,
// which the Orchestrator serves. The generated API code is imported from ../gen.
import preact from "@preact/preset-vite";
import { defineConfig } from "vite";

export default defineConfig({
  plugins: [preact()],
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 1024 },
  // The dev server reads the generated code and the CLI's renderers beside the console.
  server: { fs: { allow: [".."] } },
});
