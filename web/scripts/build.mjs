// Trunk's pre_build hook (Trunk.toml). Builds the engine's npm package in web/pkg/ and bundles the page
// and the service worker into web/build/, from where Trunk copies them into dist/ beside the package's
// files (www/index.html; the service worker gets its precache list in Trunk's post_build hook,
// scripts/precache.mjs). The page bundles the package's client.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const pkg = `${root}pkg`;
// The wasm and its glue: wasm-pack builds the crate (release profile, in the target dir of
// scripts/env.sh), runs wasm-bindgen and wasm-opt -O1 (crate/Cargo.toml's metadata) from PATH, never
// downloading a tool (`--mode no-install`), writes package.json and copies crate/README.md. `npm run`
// put node_modules/.bin first on PATH: scripts/bin (the caching wasm-opt) goes before it again.
execFileSync(
  "wasm-pack",
  ["--quiet", "build", "../crate", "--release", "--target", "web", "--mode", "no-install", "--out-dir", pkg, "--out-name", "websd"],
  { cwd: root, stdio: "inherit", env: { ...process.env, PATH: `${root}../scripts/bin:${process.env.PATH}` } },
);
const common = { absWorkingDir: root, bundle: true, target: "es2022", minify: true, sourcemap: false, logLevel: "warning" };

// The package: the worker (it loads ./websd.js beside itself) and the client (it starts ./worker.js).
await build({ ...common, outdir: "pkg", entryPoints: { worker: "src/worker.ts", client: "src/engine.ts" }, format: "esm" });
// Their types: engine.ts's declarations as client.d.ts, with the protocol's beside them.
execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, "-p", "tsconfig.package.json"], { cwd: root, stdio: "inherit" });
renameSync(`${pkg}/engine.d.ts`, `${pkg}/client.d.ts`);
const manifest = JSON.parse(readFileSync(`${pkg}/package.json`, "utf8"));
const files = ["client.js", "client.d.ts", "protocol.d.ts", "worker.js", "websd.js", "websd_bg.wasm", "websd.d.ts", "README.md"];
Object.assign(manifest, {
  files: [...new Set([...(manifest.files ?? []), ...files])],
  module: "client.js",
  types: "client.d.ts",
  exports: {
    ".": { types: "./client.d.ts", default: "./client.js" },
    "./worker.js": "./worker.js",
    "./websd.js": "./websd.js",
    "./websd_bg.wasm": "./websd_bg.wasm",
    "./package.json": "./package.json",
  },
});
delete manifest.main;
writeFileSync(`${pkg}/package.json`, `${JSON.stringify(manifest, null, 2)}\n`);

// The page, with the package's client (`websd` -> pkg/client.js).
await build({ ...common, outdir: "build", entryPoints: { main: "src/main.ts" }, format: "esm", alias: { websd: "./pkg/client.js" } });
// A classic script: module service workers are not yet everywhere.
await build({ ...common, outdir: "build", entryPoints: { sw: "src/sw.ts" }, format: "iife" });
