// Bundles the page script, the worker script and the service worker with esbuild into web/build/, from
// where Trunk copies them into dist/ (see www/index.html; the service worker gets its precache list in
// Trunk's post_build hook, scripts/precache.mjs). Run by Trunk's pre_build hook.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const common = { absWorkingDir: root, outdir: "build", bundle: true, target: "es2022", minify: true, sourcemap: false, logLevel: "warning" };
await build({ ...common, entryPoints: { main: "src/main.ts", worker: "src/worker.ts" }, format: "esm" });
// A classic script: module service workers are not yet everywhere.
await build({ ...common, entryPoints: { sw: "src/sw.ts" }, format: "iife" });
