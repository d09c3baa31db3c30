// The engine's npm package (web/pkg, built by wasm-pack in the web build): what it ships, and the example
// of its README run as written, as a site would, against the tiny model in headless Chromium.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium, type Browser } from "playwright-core";
import { startServer } from "../scripts/static-server";
import { ARGS, CHROMIUM, FIXTURES } from "./harness";
import type { Server } from "node:http";

const PKG = process.env["PKG"] ?? fileURLToPath(new URL("../pkg", import.meta.url));
/** The URL the README's example names; the test serves the tiny model in its place. */
const EXAMPLE_MODEL = "https://example.com/models/tiny-sd/manifest.json";

let browser: Browser;
let server: { server: Server; url: string };
before(async () => {
  // The package's folder as a site would serve it, with the model folders beside it under /models/.
  server = await startServer({ root: PKG, models: FIXTURES });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
});
after(async () => {
  await browser?.close();
  server?.server.close();
});

test("the npm package ships the wasm, the glue, the worker, the typed client and a README", () => {
  const manifest = JSON.parse(readFileSync(`${PKG}/package.json`, "utf8")) as { name: string; files: string[]; exports: Record<string, unknown>; types: string };
  assert.equal(manifest.name, "websd");
  for (const file of ["websd_bg.wasm", "websd.js", "worker.js", "client.js", "client.d.ts", "protocol.d.ts", "README.md"]) {
    assert.ok(manifest.files.includes(file), `package.json lists ${file}`);
    assert.ok(existsSync(`${PKG}/${file}`), `${file} is in the package`);
  }
  assert.deepEqual(manifest.exports["."], { types: "./client.d.ts", default: "./client.js" });
  const types = readFileSync(`${PKG}/client.d.ts`, "utf8");
  for (const name of ["class EngineClient", "class EngineError", "interface CallOptions", "ensureModel(", "generate("]) assert.ok(types.includes(name), `client.d.ts declares ${name}`);
});

test("the README's example generates an image, run as written against the tiny model", { timeout: 300_000 }, async () => {
  const readme = readFileSync(`${PKG}/README.md`, "utf8");
  const example = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(example, "the README has a js example");
  const lines = example.trim().split("\n").length;
  assert.ok(lines <= 15, `the example is ${lines} lines`);
  assert.ok(example.includes(EXAMPLE_MODEL), "the example names its model's URL");
  const code = example.replace(EXAMPLE_MODEL, new URL("models/tiny-sd/manifest.json", server.url).href);
  const page = await browser.newPage();
  const logs: string[] = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${String(e)}`));
  page.on("worker", (w) => w.on("console", (m) => logs.push(`worker ${m.type()}: ${m.text()}`)));
  page.on("response", (r) => r.status() >= 400 && logs.push(`${r.status()} ${r.url()}`));
  // A site's page: `websd` resolved by an import map to the package's client, the example as its module.
  const html = `<!doctype html><html><head><script type="importmap">{"imports":{"websd":"./client.js"}}</script></head><body><script type="module">\n${code}\n</script></body></html>`;
  const exampleUrl = new URL("example.html", server.url).href;
  await page.route(exampleUrl, (route) => route.fulfill({ contentType: "text/html", body: html }));
  await page.goto(exampleUrl);
  const img = page.locator("img");
  await img.waitFor({ timeout: Number(process.env["EXAMPLE_TIMEOUT_MS"] ?? 240_000) }).catch(async (e: unknown) => {
    const status = await page.locator("p").textContent().catch(() => null);
    throw new Error(`no image (status: ${status}): ${String(e)}\n${logs.slice(-20).join("\n")}`);
  });
  const decoded = await img.evaluate(async (el: HTMLImageElement) => {
    await el.decode();
    const canvas = new OffscreenCanvas(el.naturalWidth, el.naturalHeight);
    const ctx = canvas.getContext("2d")!;
    ctx.drawImage(el, 0, 0);
    const data = ctx.getImageData(0, 0, el.naturalWidth, el.naturalHeight).data;
    let min = 255;
    let max = 0;
    for (let i = 0; i < data.length; i += 4) {
      min = Math.min(min, data[i]!);
      max = Math.max(max, data[i]!);
    }
    return { width: el.naturalWidth, height: el.naturalHeight, min, max };
  });
  // tiny-sd's own size (sample_size x the VAE's factor), and an image, not a flat fill.
  assert.equal(decoded.width, 64, JSON.stringify(decoded));
  assert.equal(decoded.height, 64);
  assert.ok(decoded.max - decoded.min > 16, `the image has content: ${JSON.stringify(decoded)}`);
  const status = await page.locator("p").textContent();
  assert.match(status ?? "", /^seed 7, \d+ ms$/);
  console.log(`package example: ${decoded.width}x${decoded.height} image; status "${status}"; ${lines} lines of example`);
  await page.close();
});
