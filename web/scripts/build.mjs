// Bundles the page script and the worker script with esbuild into web/build/, from where Trunk copies
// them into dist/ (see www/index.html). Run by Trunk's pre_build hook.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
await build({
  absWorkingDir: root,
  entryPoints: { main: "src/main.ts", worker: "src/worker.ts" },
  outdir: "build",
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: false,
  logLevel: "warning",
});
