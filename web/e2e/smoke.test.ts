// End-to-end smoke test: the built dist/ served locally, Debian's Chromium driven by playwright-core
// (never a downloaded browser). The page must report the WebGPU adapter its worker got, and the GPU
// self-test (probe graph on WebGPU vs Flex in the worker) must pass.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { Server } from "node:http";
import { chromium, type Browser } from "playwright-core";
import { startServer } from "../scripts/static-server";
import { ARGS } from "./harness";

const dist = fileURLToPath(new URL("../../dist", import.meta.url));
const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";

let server: Server;
let url: string;
let browser: Browser;

before(async () => {
  ({ server, url } = await startServer({ root: dist }));
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
});

after(async () => {
  await browser?.close();
  server?.close();
});

test("the page shows the worker's WebGPU adapter and the GPU self-test passes", { timeout: 180_000 }, async () => {
  const page = await browser.newPage();
  const consoleErrors: string[] = [];
  page.on("console", (msg) => msg.type() === "error" && consoleErrors.push(msg.text()));
  page.on("pageerror", (err) => consoleErrors.push(String(err)));
  await page.goto(url);

  const adapter = page.getByTestId("gpu-adapter");
  await page.waitForFunction(() => !document.querySelector('[data-testid="gpu-adapter"]')?.textContent?.includes("starting"), null, {
    timeout: 120_000,
  });
  assert.equal(await page.getByTestId("error").isVisible(), false, await page.getByTestId("error").innerText());
  const adapterText = await adapter.innerText();
  console.log(`adapter: ${adapterText}; shader-f16: ${await page.getByTestId("gpu-f16").innerText()}`);
  assert.match(adapterText, /BrowserWebGpu/);
  assert.match(await page.getByTestId("gpu-f16").innerText(), /^(yes|no)/);
  // Inside a collapsed <details>: read the text, not the rendered text.
  const limits = (await page.getByTestId("gpu-limits").textContent()) ?? "";
  assert.match(limits, /maxStorageBufferBindingSize/);

  await page.getByTestId("self-test").click();
  const result = page.getByTestId("self-test-result");
  await page.waitForFunction(
    () => /passed|FAILED/.test(document.querySelector('[data-testid="self-test-result"]')?.textContent ?? ""),
    null,
    { timeout: 120_000 },
  );
  const text = await result.innerText();
  console.log(`self-test: ${text}`);
  assert.match(text, /^passed/);
  assert.deepEqual(consoleErrors, []);
});
