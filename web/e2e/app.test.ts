// The web app end to end, driven only through its form (the data-testid contract), in headless
// Chromium (SwiftShader WebGPU) with the built dist/ and the tiny models on the model server: txt2img,
// img2img and inpainting against diffusers' fixtures, progress, the gallery across reloads, cancel,
// offline from the service worker, bad input (oversized images refused from their headers), the
// gallery's database deleted from elsewhere and a write over quota, and the installable manifest and
// the CSP where it binds (page, worker, wasm).
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { startModelServer } from "../scripts/model-server";
import { loopbackOrigins, startServer } from "../scripts/static-server";
import { readImageHeader } from "../src/image-header";
import { LIMITS, MAX_SEED } from "../src/settings";
import { ARGS, CHROMIUM, DIST, FIXTURES, maxDiff, openEngine, readSafetensors, startHarness, type Harness } from "./harness";

let h: Harness;
let context: BrowserContext;
let page: Page;
const logs: string[] = [];

before(async () => {
  h = await startHarness();
  context = await h.browser.newContext();
  page = await context.newPage();
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${String(e)}`));
});
after(async () => {
  await context?.close();
  await h?.close();
});

// Checks of behaviour, not of numbers (offline, updates, a surviving worker), generate 16x16 px:
// 1/16 of the 64 px parity runs' work, which on SwiftShader is ~10 s per U-Net step.
const SMALL = { width: "16", height: "16" };

const model = (name: string): string => `${h.cdn.url}${name}/manifest.json`;
const appUrl = (name: string): string => `${h.app.url}?model=${encodeURIComponent(model(name))}`;

/** A Content-Security-Policy's directives: name -> sources. */
function policy(csp: string): Map<string, string[]> {
  return new Map(
    csp
      .split(";")
      .map((d) => d.trim())
      .filter(Boolean)
      .map((d) => d.split(/\s+/))
      .map(([name, ...sources]) => [name!, sources]),
  );
}

/** The fixture run's settings (its metadata) and diffusers' image. */
function fixture(run: string): { meta: Record<string, string>; image: Float32Array } {
  const tensors = `${FIXTURES}/runs/${run}/tensors.safetensors`;
  const { data } = readSafetensors(tensors, "image");
  const txt = readSafetensors(`${FIXTURES}/runs/txt2img_ddim/tensors.safetensors`, "image").meta;
  // img2img / inpaint runs share txt2img_ddim's prompt, negative prompt and guidance (oracle step3_tiny.py).
  return { meta: { ...txt, ...readSafetensors(tensors, "image").meta }, image: data };
}

/** The form fields of a fixture run's settings (all runs here use DDIM). */
function fixtureFields(meta: Record<string, string>): Record<string, string> {
  return {
    prompt: meta["prompt"]!,
    negative: meta["negative_prompt"]!,
    steps: meta["steps"]!,
    guidance: meta["guidance_scale"]!,
    seed: meta["seed"]!,
    scheduler: "ddim",
  };
}

/** The tEXt chunks of a PNG file. */
function pngText(png: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  for (let at = 8; at + 8 <= png.length; ) {
    const length = png.readUInt32BE(at);
    const type = png.toString("latin1", at + 4, at + 8);
    if (type === "tEXt" || type === "iTXt") {
      const data = png.subarray(at + 8, at + 8 + length);
      const nul = data.indexOf(0);
      const key = data.toString("latin1", 0, nul);
      // iTXt: compression flag, method, language\0, translated keyword\0, then UTF-8 text.
      let text = data.subarray(nul + 1);
      if (type === "iTXt") {
        text = text.subarray(2);
        text = text.subarray(text.indexOf(0) + 1);
        text = text.subarray(text.indexOf(0) + 1);
      }
      out[key] = type === "iTXt" ? text.toString("utf8") : text.toString("latin1");
    }
    at += 12 + length;
  }
  return out;
}

async function fill(values: Record<string, string>): Promise<void> {
  for (const [id, value] of Object.entries(values)) {
    const field = page.getByTestId(id);
    if (id === "scheduler") await field.selectOption(value);
    else await field.fill(value);
  }
}

async function errorText(): Promise<string> {
  const box = page.getByTestId("error");
  return (await box.isVisible()) ? (await box.innerText()).trim() : "";
}

/** Waits until the error box shows text matching `re`. */
async function waitError(re: RegExp, timeout = 10_000): Promise<void> {
  await page.waitForFunction(
    (source) => {
      const box = document.querySelector<HTMLElement>('[data-testid="error"]');
      return !!box && !box.hidden && new RegExp(source).test(box.textContent ?? "");
    },
    re.source,
    { timeout },
  );
}

async function resultSrc(): Promise<string | null> {
  return page.getByTestId("result").getAttribute("src");
}

/** Clicks Generate and waits for the result image's src to change (or an error). */
async function generate(timeoutMs = 300_000): Promise<{ src: string; ms: number }> {
  const before = await resultSrc();
  const t0 = Date.now();
  await page.getByTestId("generate").click();
  const deadline = t0 + timeoutMs;
  for (;;) {
    const src = await resultSrc();
    if (src && src !== before && !(await page.getByTestId("cancel").isEnabled())) return { src, ms: Date.now() - t0 };
    const error = await errorText();
    if (error) throw new Error(`error shown: ${error}\n${logs.slice(-15).join("\n")}`);
    if (Date.now() > deadline) throw new Error(`no result after ${timeoutMs} ms\n${logs.slice(-15).join("\n")}`);
    await page.waitForTimeout(250);
  }
}

/** The result image's pixels, decoded by the browser without colour conversion. */
async function resultPixels(): Promise<{ width: number; height: number; rgba: number[] }> {
  return page.evaluate(async () => {
    const img = document.querySelector<HTMLImageElement>('[data-testid="result"]')!;
    await img.decode();
    const bitmap = await createImageBitmap(img, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d")!;
    ctx.drawImage(bitmap, 0, 0);
    return { width: bitmap.width, height: bitmap.height, rgba: Array.from(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data) };
  });
}

async function waitReady(): Promise<void> {
  // The model's configs are read (the status line shows its size) before the form is filled.
  await page.waitForFunction(() => /\dx\d/.test(document.querySelector('[data-testid="model-status"]')?.textContent ?? ""), null, {
    timeout: 120_000,
  });
}

test("the manifest is installable and the CSP forbids eval", { timeout: 120_000 }, async () => {
  const response = await page.goto(appUrl("tiny-sd"));
  const header = response!.headers()["content-security-policy"] ?? "";
  const meta = (await page.locator('meta[http-equiv="Content-Security-Policy"]').getAttribute("content")) ?? "";
  for (const [where, csp] of [["header", header], ["meta", meta]] as const) {
    const directives = new Map(csp.split(";").map((d) => d.trim().split(/\s+/)).map(([k, ...v]) => [k!, v]));
    const scripts = directives.get("script-src") ?? [];
    assert.ok(scripts.includes("'wasm-unsafe-eval'"), `${where}: script-src allows compiling wasm: ${csp}`);
    assert.ok(!scripts.includes("'unsafe-eval'") && !scripts.includes("'unsafe-inline'"), `${where}: no eval, no inline scripts: ${csp}`);
    assert.deepEqual(directives.get("object-src"), ["'none'"], where);
    assert.ok(!(directives.get("connect-src") ?? []).includes("*"), `${where}: weights only from listed origins`);
  }
  // How the header relates to the meta policy (the model server's origins added): the CSP test below.
  assert.equal(await page.locator("script:not([src])").count(), 0, "no inline scripts");

  const manifestHref = await page.locator('link[rel="manifest"]').getAttribute("href");
  const manifest = (await (await page.request.get(new URL(manifestHref!, page.url()).href)).json()) as {
    name: string;
    short_name: string;
    start_url: string;
    display: string;
    icons: { src: string; sizes: string; purpose?: string }[];
  };
  assert.ok(manifest.name && manifest.short_name);
  assert.ok(["standalone", "fullscreen", "minimal-ui"].includes(manifest.display));
  for (const size of ["192x192", "512x512"]) assert.ok(manifest.icons.some((i) => i.sizes === size), `icon ${size}`);
  assert.ok(manifest.icons.some((i) => i.purpose?.includes("maskable")), "a maskable icon");
  for (const icon of manifest.icons) {
    const r = await page.request.get(new URL(icon.src, new URL(manifestHref!, page.url())).href);
    assert.equal(r.status(), 200, icon.src);
  }
  // Chromium's own installability check (what Lighthouse reports), once the service worker controls,
  // in a profile on disk (an incognito-like context is never installable).
  const profile = mkdtempSync(path.join(tmpdir(), "websd-profile-"));
  const persistent = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS });
  try {
    const p = persistent.pages()[0] ?? (await persistent.newPage());
    await p.goto(appUrl("tiny-sd"));
    await p.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 60_000 });
    const cdp = await persistent.newCDPSession(p);
    const { installabilityErrors } = (await cdp.send("Page.getInstallabilityErrors")) as {
      installabilityErrors: { errorId: string }[];
    };
    console.log(`installability errors: ${JSON.stringify(installabilityErrors)}`);
    assert.deepEqual(installabilityErrors, []);
  } finally {
    await persistent.close();
    rmSync(profile, { recursive: true, force: true });
  }
});

test("the CSP binds the page, worker.js and the wasm: the built policy has no loopback, the test server adds exactly its model server", { timeout: 120_000 }, async () => {
  const production = ["'self'", "https://huggingface.co", "https://*.huggingface.co", "https://*.hf.co"];
  const html = readFileSync(path.join(DIST, "index.html"), "utf8");
  const meta = /<meta\s+http-equiv="Content-Security-Policy"\s+content="([^"]*)"/i.exec(html)?.[1] ?? "";
  const built = policy(meta);
  assert.deepEqual(built.get("connect-src"), production, `the built policy's connect-src: ${meta}`);
  for (const [name, sources] of built) {
    for (const source of sources) assert.doesNotMatch(source, /localhost|127\.|\[::1\]|^http:|:\*/, `${name} ${source}: no loopback, no plain http`);
  }
  // The test's app server sends the built policy with the model server's origins (its port, under both
  // loopback names) added to connect-src, on every file: what binds a worker is its own response.
  const cdn = loopbackOrigins(h.cdn.url);
  assert.deepEqual(cdn, [`http://127.0.0.1:${new URL(h.cdn.url).port}`, `http://localhost:${new URL(h.cdn.url).port}`]);
  const wasm = readdirSync(DIST).filter((f) => f.endsWith(".wasm"));
  assert.deepEqual(wasm, ["websd_bg.wasm"]);
  for (const file of ["", "worker.js", "sw.js", "websd.js", ...wasm]) {
    const response = await fetch(new URL(file, h.app.url));
    assert.equal(response.status, 200, file);
    const header = policy(response.headers.get("content-security-policy") ?? "");
    assert.deepEqual(header.get("connect-src"), [...production, ...cdn], `${file || "index.html"}: connect-src`);
    assert.deepEqual([...header.keys()], [...built.keys()], `${file || "index.html"}: the same directives`);
    for (const [name, sources] of built) if (name !== "connect-src") assert.deepEqual(header.get(name), sources, `${file}: ${name}`);
    if (file.endsWith(".wasm")) assert.equal(response.headers.get("content-type"), "application/wasm");
    await response.body?.cancel();
  }
  // The worker obeys that header: the engine (whose allow-list takes any loopback port) reaches the
  // listed model server, and cannot reach the same files on another port.
  const other = await startModelServer({ root: FIXTURES });
  const e = await openEngine(h);
  try {
    const listed = await e.call({ type: "inspectModel", manifestUrl: model("tiny-sd") });
    assert.equal(listed.final.type, "modelInfo", JSON.stringify(listed.final));
    const unlisted = await e.call({ type: "inspectModel", manifestUrl: `${other.url}tiny-sd/manifest.json` });
    console.log(`a model server on an unlisted port: ${JSON.stringify(unlisted.final)}`);
    assert.equal(unlisted.final.type, "error");
    assert.deepEqual(other.models.stats.requests, {}, "no request reached it");
  } finally {
    await e.page.close();
    other.server.closeAllConnections();
    other.server.close();
  }
});

test("the form's seed limit is the engine's: 2^53 - 1 reaches it, 2^53 is refused as a bad request", { timeout: 120_000 }, async () => {
  const e = await openEngine(h);
  try {
    // A model that is not stored: the request ends right after its settings are read.
    const generate = (seed: number) => e.call({ type: "generate", model: "https://nowhere.invalid/m.json", settings: { prompt: "x", seed } });
    const top = (await generate(MAX_SEED)).final;
    const over = (await generate(MAX_SEED + 1)).final;
    console.log(`seed 2^53 - 1: ${JSON.stringify(top)}\nseed 2^53: ${JSON.stringify(over)}`);
    assert.ok(top.type === "error" && top.code !== "bad-request" && !/seed/.test(top.message), JSON.stringify(top));
    assert.ok(over.type === "error" && over.code === "bad-request", JSON.stringify(over));
  } finally {
    await e.page.close();
  }
});

test("txt2img through the form matches diffusers; progress reaches 100%; the gallery keeps it", { timeout: 600_000 }, async () => {
  await waitReady();
  const { meta, image } = fixture("txt2img_ddim");
  await fill({ ...fixtureFields(meta), width: meta["width"]!, height: meta["height"]! });
  const { ms } = await generate();
  const pixels = await resultPixels();
  assert.deepEqual([pixels.width, pixels.height], [64, 64]);
  const diff = maxDiff(image, pixels.rgba);
  console.log(`txt2img via the app: max |app - diffusers| = ${diff.toExponential(2)} (x255: ${(diff * 255).toFixed(1)}), ${ms} ms including download and load`);
  assert.ok(diff <= 2e-2, `image diff ${diff}`);
  const progress = page.getByTestId("progress");
  assert.equal(await progress.evaluate((p) => (p as HTMLProgressElement).value), 100);
  assert.match((await progress.textContent()) ?? "", /100%/);
  // The PNG as downloaded carries A1111's `parameters` text chunk.
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download").click()]);
  assert.match(download.suggestedFilename(), /^websd-0-a-photo-of-an-astronaut.*\.png$/);
  const png = readFileSync((await download.path())!);
  const parameters = pngText(png)["parameters"] ?? "";
  console.log(`PNG parameters: ${JSON.stringify(parameters)}`);
  assert.match(parameters, /^a photo of an astronaut riding a horse\nNegative prompt: blurry\nSteps: 8, Sampler: DDIM, CFG scale: 7.5, Seed: 0, Size: 64x64/);

  await page.reload();
  await page.waitForSelector('[data-testid="gallery-item"]', { timeout: 30_000 });
  const items = page.getByTestId("gallery-item");
  assert.equal(await items.count(), 1);
  const caption = await items.first().innerText();
  assert.match(caption, /astronaut/);
  assert.match(caption, /seed 0/);
  assert.match(caption, /DDIM/);
});

test("bad input gets a clear message and the worker survives", { timeout: 300_000 }, async () => {
  await waitReady();
  const cases: [Record<string, string>, RegExp][] = [
    [{ width: "63" }, /multiple of 8/],
    [{ width: "64", height: "100" }, /multiple of 8/],
    [{ height: "64", steps: "100000" }, /Steps must be .* 1 to 1000/],
    [{ steps: "abc" }, /Steps must be/],
    [{ steps: "1", guidance: "-1" }, /Guidance/],
    [{ guidance: "7.5", seed: "-5" }, /seed/],
    [{ seed: String(2 ** 53) }, /seed must be .* to 9007199254740991 \(2\^53 - 1\)/],
  ];
  for (const [values, expected] of cases) {
    await fill(values);
    await page.getByTestId("generate").click();
    await waitError(expected);
  }
  // Past the size limit (limits.gen.ts, from crate/src/limits.rs): the form refuses before sending
  // anything, with the message the engine gives the same request.
  await fill({ seed: "0", width: String(LIMITS.maxSide + 8), height: "64" });
  await page.getByTestId("generate").click();
  const sizeMessage = `${LIMITS.maxSide + 8}x64 is larger than the ${LIMITS.maxSide} px this app supports`;
  await waitError(new RegExp(sizeMessage));
  const engineAnswer = await page.evaluate(
    ([model, width]) =>
      (window as unknown as { websdEngine: { call(r: unknown): Promise<{ type: string; message?: string }> } }).websdEngine.call({
        type: "generate",
        model,
        settings: { prompt: "a red apple", width, height: 64, steps: 1 },
      }),
    [model("tiny-sd"), LIMITS.maxSide + 8] as const,
  );
  assert.equal(engineAnswer.type, "error", JSON.stringify(engineAnswer));
  assert.ok(engineAnswer.message?.includes(sizeMessage), `the engine says: ${engineAnswer.message}`);
  await fill({ seed: "0", steps: "8", width: "64" });
  // A file that is not an image, for img2img.
  await page.getByTestId("mode-img2img").check();
  await page.getByTestId("init-image").setInputFiles({ name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("not an image") });
  await waitError(/"notes.txt" is not an image/);
  await page.getByTestId("generate").click();
  await waitError(/image to start from/);
  await page.getByTestId("mode-txt2img").check();
  // An empty model URL, in the page URL and in the form.
  await page.goto(`${h.app.url}?model=`);
  await waitError(/model URL .* empty/, 30_000);
  await page.locator("summary", { hasText: "Use another model" }).click();
  await page.getByTestId("model-url").fill("  ");
  await page.getByTestId("model-use").click();
  await waitError(/model URL is empty/);
  // A manifest on an origin that is not allowed is refused by the engine, before any fetch.
  await page.goto(`${h.app.url}?model=${encodeURIComponent("https://example.com/evil/manifest.json")}`);
  await waitError(/not an allowed model origin/, 60_000);
  // The engine still answers: the tiny model generates.
  await page.goto(appUrl("tiny-sd"));
  await waitReady();
  assert.equal(await errorText(), "");
  // A1111 prompt weighting (on by default): a weight that is not a number is refused by the engine;
  // with the box unticked the same prompt is words, and generates.
  const prompt = await page.getByTestId("prompt").inputValue();
  await fill({ steps: "1", ...SMALL, seed: "1", prompt: "a (cat:1.2.3)" });
  await page.getByTestId("generate").click();
  await waitError(/"1\.2\.3" in "\(text:1\.2\.3\)" is not a number/);
  await page.getByTestId("prompt-weighting").uncheck();
  await generate();
  await page.getByTestId("prompt-weighting").check();
  await fill({ prompt });
});

test("cancel mid-run, then generate again", { timeout: 300_000 }, async () => {
  // 64 px, not SMALL: see engine.test.ts's cancel test (a generate right after a cancel at 16 px once
  // failed to map a staging buffer).
  await fill({ steps: "40", width: "64", height: "64" });
  await page.getByTestId("generate").click();
  await page.waitForFunction(() => /step [1-9]/.test(document.querySelector('[data-testid="progress-detail"]')?.textContent ?? ""), null, {
    timeout: 120_000,
  });
  await page.getByTestId("cancel").click();
  await page.waitForFunction(() => /Cancelled/.test(document.querySelector('[data-testid="progress-text"]')?.textContent ?? ""), null, {
    timeout: 60_000,
  });
  assert.equal(await errorText(), "");
  assert.equal(await page.getByTestId("generate").isEnabled(), true);
  const stoppedAt = await page.getByTestId("progress-detail").innerText();
  console.log(`cancelled at: ${stoppedAt}`);
  await fill({ steps: "1" });
  await generate();
});

test("offline: the app reloads from the service worker and generates from IndexedDB", { timeout: 300_000 }, async () => {
  assert.ok(await page.evaluate(() => navigator.serviceWorker.controller !== null), "a service worker controls the page");
  await context.setOffline(true);
  try {
    await page.reload();
    await waitReady();
    assert.match(await page.getByTestId("model-status").innerText(), /offline/);
    await fill({ steps: "1", ...SMALL, seed: "2" });
    await generate();
    assert.equal(await errorText(), "");
  } finally {
    await context.setOffline(false);
  }
});

for (const [run, name, mode] of [
  ["img2img_ddim", "tiny-sd", "img2img"],
  ["inpaint_ddim", "tiny-sd-inpaint", "inpaint"],
] as const) {
  test(`${mode} through the form matches diffusers (${run})`, { timeout: 600_000 }, async () => {
    await page.goto(appUrl(name));
    await waitReady();
    const { meta, image } = fixture(run);
    await page.getByTestId(`mode-${mode}`).check();
    await page.getByTestId("init-image").setInputFiles(`${FIXTURES}/runs/${run}/init_image.png`);
    await page.waitForFunction(() => /used at/.test(document.querySelector('[data-testid="init-info"]')?.textContent ?? ""));
    if (mode === "inpaint") {
      await page.getByTestId("mask-image").setInputFiles(`${FIXTURES}/runs/${run}/mask.png`);
      await page.waitForFunction(() => /\d+% marked/.test(document.querySelector('[data-testid="mask-coverage"]')?.textContent ?? ""));
    }
    await fill({ ...fixtureFields(meta), strength: meta["strength"]! });
    assert.equal(await page.getByTestId("width").inputValue(), "64");
    const { ms } = await generate();
    const pixels = await resultPixels();
    const diff = maxDiff(image, pixels.rgba);
    console.log(`${mode} via the app: max |app - diffusers| = ${diff.toExponential(2)} (x255: ${(diff * 255).toFixed(1)}), ${ms} ms`);
    assert.ok(diff <= 2e-2, `image diff ${diff}`);
  });
}

test("the mask brush paints, inverts and clears", { timeout: 60_000 }, async () => {
  const mask = page.getByTestId("mask");
  const box = (await mask.boundingBox())!;
  await page.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.5);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.7, box.y + box.height * 0.5, { steps: 5 });
  await page.mouse.up();
  await page.getByTestId("mask-clear").click();
  assert.match(await page.getByTestId("mask-coverage").innerText(), /^0%/);
  await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.5);
  await page.mouse.down();
  await page.mouse.up();
  const painted = Number(/(\d+)%/.exec(await page.getByTestId("mask-coverage").innerText())![1]);
  assert.ok(painted > 0 && painted < 100, `painted ${painted}%`);
  await page.getByTestId("mask-invert").click();
  const inverted = Number(/(\d+)%/.exec(await page.getByTestId("mask-coverage").innerText())![1]);
  assert.ok(Math.abs(inverted - (100 - painted)) <= 1, `inverted ${inverted}% vs ${painted}%`);
});

/** A PNG whose header says `width` x `height` (no pixel data: it is never decoded). */
function pngHeader(width: number, height: number): Buffer {
  const be32 = (n: number): number[] => [n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255];
  return Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, ...be32(13), ...Buffer.from("IHDR"), ...be32(width), ...be32(height), 8, 6, 0, 0, 0, 0, 0, 0, 0]);
}

test("an image too large to decode is refused from its header, as init image and as mask", { timeout: 120_000 }, async () => {
  // The header reader agrees with Chromium's own encoders (sizes that tell width from height).
  const encoded = await page.evaluate(async () => {
    const out: { type: string; bytes: number[] }[] = [];
    for (const [type, alpha] of [["image/png", 1], ["image/jpeg", 1], ["image/webp", 1], ["image/webp", 0.5]] as const) {
      const canvas = new OffscreenCanvas(37, 23);
      const ctx = canvas.getContext("2d")!;
      ctx.fillStyle = `rgba(200, 100, 50, ${alpha})`;
      ctx.fillRect(0, 0, 37, 23);
      out.push({ type, bytes: Array.from(new Uint8Array(await (await canvas.convertToBlob({ type, quality: 0.9 })).arrayBuffer())) });
    }
    return out;
  });
  for (const { type, bytes } of encoded) {
    const header = readImageHeader(Uint8Array.from(bytes));
    assert.deepEqual(header, { format: type.slice("image/".length), width: 37, height: 23 }, `${type}: ${Buffer.from(bytes.slice(0, 40)).toString("hex")}`);
  }

  await page.goto(appUrl("tiny-sd"));
  await page.getByTestId("mode-img2img").check();
  await page.getByTestId("init-image").setInputFiles({ name: "huge.png", mimeType: "image/png", buffer: pngHeader(30000, 30000) });
  await waitError(/"huge.png" is 30000x30000 pixels \(900 megapixels\): too large .* up to 67.1 megapixels \(8192x8192\)/);
  assert.equal(await page.getByTestId("init-info").innerText(), "", "nothing was used");
  // Within the limit, the image is used; then a mask over the limit (WebP, extended header) is refused.
  await page.getByTestId("init-image").setInputFiles(`${FIXTURES}/runs/inpaint_ddim/init_image.png`);
  await page.waitForFunction(() => /used at/.test(document.querySelector('[data-testid="init-info"]')?.textContent ?? ""));
  assert.equal(await errorText(), "");
  await page.getByTestId("mode-inpaint").check();
  const le24 = (n: number): number[] => [n & 255, (n >> 8) & 255, n >> 16];
  const webp = Buffer.from([...Buffer.from("RIFF"), 22, 0, 0, 0, ...Buffer.from("WEBPVP8X"), 10, 0, 0, 0, 0, 0, 0, 0, ...le24(8192), ...le24(8191)]);
  await page.getByTestId("mask-image").setInputFiles({ name: "mask.webp", mimeType: "image/webp", buffer: webp });
  await waitError(/"mask.webp" is 8193x8192 pixels .* too large/);
  assert.match(await page.getByTestId("mask-coverage").innerText(), /^0%/, "the mask is unchanged");
});

test("the gallery reopens its database after another context deletes it, and says when a write fails", { timeout: 300_000 }, async () => {
  await page.goto(appUrl("tiny-sd"));
  await waitReady();
  await page.waitForSelector('[data-testid="gallery"] > *');
  // Deleting the database (what clearing site data does) sends the page's open connection
  // `versionchange`: unless the page closes it, the deletion stays blocked.
  const deletion = await page.evaluate(
    () =>
      new Promise<string>((resolve) => {
        const request = indexedDB.deleteDatabase("websd-gallery");
        request.onsuccess = () => resolve("deleted");
        request.onerror = () => resolve(`failed: ${String(request.error)}`);
        request.onblocked = () => setTimeout(() => resolve("blocked by an open connection"), 5000);
      }),
  );
  assert.equal(deletion, "deleted");
  await fill({ steps: "1", ...SMALL, seed: "3" });
  await generate();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="gallery-item"]').length === 1, null, { timeout: 30_000 });
  assert.equal(await page.getByTestId("gallery-error").isVisible(), false);

  // A write over quota: said in the gallery's status line, the image still shown and downloadable.
  await page.evaluate(() => {
    const stored = IDBObjectStore.prototype as unknown as Record<string, unknown>;
    (window as unknown as { __idbWrites: unknown[] }).__idbWrites = [stored["add"], stored["put"]];
    // (No named function here: tsx would wrap it in a __name() call the page does not have.)
    for (const method of ["add", "put"]) {
      stored[method] = function () {
        throw new DOMException("quota exceeded (a test stub)", "QuotaExceededError");
      };
    }
  });
  try {
    await fill({ seed: "4" });
    await generate();
    await page.getByTestId("gallery-error").waitFor({ state: "visible", timeout: 30_000 });
    const message = await page.getByTestId("gallery-error").innerText();
    console.log(`gallery-error: ${message}`);
    assert.match(message, /not saved in the gallery: this site's storage is full/);
    assert.equal(await page.getByTestId("gallery-item").count(), 1);
    assert.equal(await page.getByTestId("download").isVisible(), true);
  } finally {
    await page.evaluate(() => {
      const stored = IDBObjectStore.prototype as unknown as Record<string, unknown>;
      [stored["add"], stored["put"]] = (window as unknown as { __idbWrites: unknown[] }).__idbWrites;
    });
  }
});

test("a new version is announced, waits for the running generation, then applies on reload", { timeout: 300_000 }, async () => {
  // A copy of the site whose sw.js is then replaced by a "new build" (another version).
  const root = mkdtempSync(path.join(tmpdir(), "websd-dist-"));
  cpSync(DIST, root, { recursive: true });
  const site = await startServer({ root, connectOrigins: loopbackOrigins(h.cdn.url) });
  const ctx = await h.browser.newContext();
  try {
    const p = await ctx.newPage();
    const pageLogs: string[] = [];
    const t0 = Date.now();
    p.on("console", (m) => pageLogs.push(`${((Date.now() - t0) / 1e3).toFixed(1)} s ${m.type()}: ${m.text()}`));
    await p.goto(`${site.url}?model=${encodeURIComponent(model("tiny-sd"))}`);
    await p.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 60_000 });
    const caches1 = await p.evaluate(() => caches.keys());
    const sw = readFileSync(path.join(root, "sw.js"), "utf8");
    const version = /"version":"([0-9a-f]+)"/.exec(sw)![1]!;
    writeFileSync(path.join(root, "sw.js"), sw.replace(`"version":"${version}"`, `"version":"next${version.slice(4)}"`));

    // A generation runs while the update arrives; asking to update must not interrupt it.
    await p.waitForFunction(() => /\dx\d/.test(document.querySelector('[data-testid="model-status"]')?.textContent ?? ""), null, { timeout: 60_000 });
    // Enough steps that it is still running when the update waits, at the size that costs least.
    await p.getByTestId("steps").fill("500");
    await p.getByTestId("width").fill(SMALL.width);
    await p.getByTestId("height").fill(SMALL.height);
    await p.getByTestId("generate").click();
    await p.waitForFunction(() => /step [1-9]/.test(document.querySelector('[data-testid="progress-detail"]')?.textContent ?? ""), null, {
      timeout: 180_000,
    });
    await p.evaluate(async () => (await navigator.serviceWorker.getRegistration())!.update());
    await p.getByTestId("update").waitFor({ state: "visible", timeout: 60_000 });
    await p.getByTestId("update-apply").click();
    await p.waitForFunction(() => /when the current generation ends/.test(document.querySelector('[data-testid="update-text"]')?.textContent ?? ""));
    // The generation goes on while the update waits: a later step is reached.
    const stepBefore = await p.getByTestId("progress-detail").innerText();
    await p.waitForFunction(
      (before) => document.querySelector('[data-testid="progress-detail"]')?.textContent !== before,
      stepBefore,
      { timeout: 60_000 },
    );
    assert.equal(await p.evaluate(() => navigator.serviceWorker.controller?.scriptURL !== undefined), true);
    assert.match(await p.getByTestId("progress-text").innerText(), /Denoising/, `still generating (${stepBefore})`);
    // The generation ends (cancelled here, to be quick): then the update applies and the page reloads.
    const reloaded = p.waitForEvent("load", { timeout: 120_000 });
    await p.getByTestId("cancel").click();
    pageLogs.push(`${((Date.now() - t0) / 1e3).toFixed(1)} s: cancel clicked`);
    // On failure, what the page and the registration were at.
    await reloaded.catch(async (e: unknown) => {
      const texts = await p.evaluate(() =>
        ["progress-text", "progress-detail", "update-text"].map((id) => `${id}: ${document.querySelector(`[data-testid="${id}"]`)?.textContent}`),
      );
      const sws = await p.evaluate(async () => {
        const r = await navigator.serviceWorker.getRegistration();
        return `active ${r?.active?.state}, waiting ${r?.waiting?.state}, installing ${r?.installing?.state}, controller ${navigator.serviceWorker.controller?.state}`;
      });
      throw new Error(`no reload after the cancel: ${String(e)}\n${texts.join("\n")}\n${sws}\n${pageLogs.slice(-30).join("\n")}`);
    });
    await p.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 60_000 });
    const caches2 = await p.evaluate(() => caches.keys());
    console.log(`caches before: ${JSON.stringify(caches1)}, after: ${JSON.stringify(caches2)}`);
    assert.deepEqual(caches2, [`websd-shell-next${version.slice(4)}`], "the new version's cache only");
    assert.equal(await p.getByTestId("update").isVisible(), false);
  } finally {
    await ctx.close();
    site.server.close();
    rmSync(root, { recursive: true, force: true });
  }
});

test("a LoRA through the form: added from a file, matches diffusers fused at 1 and at 0.5, removed gives the plain image; the model is not read again; its PNG restores it", { timeout: 900_000 }, async () => {
  await page.goto(appUrl("tiny-sd"));
  await waitReady();
  const runs = `${FIXTURES}/lora/runs.safetensors`;
  const { meta } = readSafetensors(runs, "no_lora");
  await fill({
    prompt: meta["prompt"]!,
    negative: meta["negative_prompt"]!,
    steps: meta["num_inference_steps"]!,
    guidance: meta["guidance_scale"]!,
    seed: meta["seed"]!,
    width: meta["width"]!,
    height: meta["height"]!,
    scheduler: "ddim",
  });
  await page.getByTestId("lora-file").setInputFiles(`${FIXTURES}/lora/lora_peft.safetensors`);
  await page.waitForFunction(() => /lora_peft stored/.test(document.querySelector('[data-testid="lora-info"]')?.textContent ?? ""), null, { timeout: 60_000 });
  assert.deepEqual(await page.getByTestId("lora-name").allInnerTexts(), ["lora_peft"]);
  await page.waitForFunction(() => /lora_peft: \d/.test(document.querySelector('[data-testid="stored-loras"]')?.textContent ?? ""));
  // The page's own engine worker: its model chunk reads.
  const chunkReads = async (): Promise<number> => {
    for (const worker of page.workers()) {
      const reads = await worker.evaluate(() => (self as unknown as { websdStats?: { weightChunkReads(): number } }).websdStats?.weightChunkReads());
      if (reads !== undefined) return reads;
    }
    throw new Error("no engine worker");
  };
  const compare = async (key: string): Promise<number> => {
    const { ms } = await generate(600_000);
    const diff = maxDiff(readSafetensors(runs, key).data, (await resultPixels()).rgba);
    console.log(`LoRA via the app, ${key}: max |app - diffusers| = ${diff.toExponential(2)}, ${ms} ms; ${await page.getByTestId("lora-info").innerText()}`);
    return diff;
  };
  assert.ok((await compare("peft_1.0")) <= 2e-2);
  const reads = await chunkReads();
  await page.getByTestId("lora-weight").fill("0.5");
  assert.ok((await compare("peft_0.5")) <= 2e-2);
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download").click()]);
  const png = readFileSync((await download.path())!);
  const parameters = pngText(png)["parameters"] ?? "";
  console.log(`PNG parameters: ${JSON.stringify(parameters)}`);
  assert.match(parameters, /^a photo of an astronaut riding a horse <lora:lora_peft:0.5>\n/);
  assert.match(parameters, /, Lora hashes: "lora_peft: [0-9a-f]{12}"$/);
  await page.getByTestId("lora-remove").click();
  assert.ok((await compare("no_lora")) <= 2e-2);
  assert.match(await page.getByTestId("lora-info").innerText(), /No LoRA merged/);
  assert.equal(await chunkReads(), reads, "re-weighting and removing the LoRA read no chunk of the model");
  // The PNG brings the LoRA back into the list, at its weight.
  await page.getByTestId("png-settings").setInputFiles({ name: "lora.png", mimeType: "image/png", buffer: png });
  await page.waitForFunction(() => /"lora.png" loaded/.test(document.querySelector('[data-testid="png-settings-info"]')?.textContent ?? ""));
  assert.equal(await page.getByTestId("png-settings-info").innerText(), 'Settings of "lora.png" loaded.');
  assert.deepEqual(await page.getByTestId("lora-name").allInnerTexts(), ["lora_peft"]);
  assert.equal(await page.getByTestId("lora-weight").inputValue(), "0.5");
  assert.equal(await page.getByTestId("prompt").inputValue(), "a photo of an astronaut riding a horse");
  // Deleted from the storage panel; the list keeps the name, and a generation says it is not stored.
  await page.getByTestId("delete-lora").click();
  await page.waitForFunction(() => /No LoRAs stored/.test(document.querySelector('[data-testid="stored-loras"]')?.textContent ?? ""));
  await fill({ steps: "1", ...SMALL });
  await page.getByTestId("generate").click();
  await waitError(/LoRA lora_peft is not stored/);
  await page.getByTestId("lora-remove").click();
  // An embedding from a file: stored under its file's stem, listed, deleted.
  await page.getByTestId("embedding-file").setInputFiles(`${FIXTURES}/textual_inversion/tiny-style.safetensors`);
  await page.waitForFunction(() => /tiny-style stored \(2 vectors\)/.test(document.querySelector('[data-testid="embedding-info"]')?.textContent ?? ""));
  await page.waitForFunction(() => /tiny-style: 2 vectors/.test(document.querySelector('[data-testid="stored-embeddings"]')?.textContent ?? ""));
  await page.getByTestId("delete-embedding").click();
  await page.waitForFunction(() => /No embeddings stored/.test(document.querySelector('[data-testid="stored-embeddings"]')?.textContent ?? ""));
});

/** `png` with an iTXt `parameters` chunk after its header (CRC zeroed: the page reads the bytes itself). */
function withParameters(png: Buffer, text: string): Buffer {
  const data = Buffer.concat([Buffer.from("parameters\0\0\0\0\0", "latin1"), Buffer.from(text, "utf8")]);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const chunk = Buffer.concat([length, Buffer.from("iTXt"), data, Buffer.alloc(4)]);
  return Buffer.concat([png.subarray(0, 33), chunk, png.subarray(33)]);
}

test("settings load from one of our PNGs and from an A1111 PNG; what cannot be applied is named", { timeout: 120_000 }, async () => {
  await page.goto(appUrl("tiny-sd"));
  await page.waitForSelector('[data-testid="model"] option', { state: "attached" });
  const info = page.getByTestId("png-settings-info");
  const fields = async (): Promise<Record<string, string>> => {
    const out: Record<string, string> = {};
    for (const f of ["prompt", "negative", "steps", "guidance", "seed", "width", "height", "scheduler", "strength"]) {
      out[f] = await page.getByTestId(f).inputValue();
    }
    return out;
  };
  const base = readFileSync(`${FIXTURES}/runs/img2img_ddim/init_image.png`);
  const a1111 = [
    "masterpiece, (red hair:1.2) <lora:detail:0.6>",
    "Negative prompt: lowres",
    'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 1234567890, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, Lora hashes: "detail: 1a2b3c4d5e6f", TI hashes: "easynegative: c74b4e810b03"',
  ].join("\n");
  await page.getByTestId("png-settings").setInputFiles({ name: "a1111.png", mimeType: "image/png", buffer: withParameters(base, a1111) });
  await page.waitForFunction(() => /loaded/.test(document.querySelector('[data-testid="png-settings-info"]')?.textContent ?? ""));
  assert.deepEqual(await fields(), {
    prompt: "masterpiece, (red hair:1.2)",
    negative: "lowres",
    steps: "30",
    guidance: "6",
    seed: "1234567890",
    width: "512",
    height: "768",
    scheduler: "dpmpp-2m-karras",
    strength: "0.45",
  });
  assert.equal(await page.getByTestId("mode-img2img").isChecked(), true);
  const text = await info.innerText();
  console.log(`A1111 PNG: ${text}`);
  for (const part of ["LoRA detail at 0.6 (not stored here: add it from a file or a URL)", "embedding easynegative (not stored here", "Clip skip: 2", "Model: v1-5-pruned-emaonly (not among this app's models)"]) {
    assert.ok(text.includes(part), `${part} in ${text}`);
  }
  // One of ours, as the app writes it: every field, and the model it names is the one in use.
  const ours = "a cat on a mat\nNegative prompt: blurry\nSteps: 8, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 0123456789, Model: tiny-sd";
  await page.getByTestId("png-settings").setInputFiles({ name: "ours.png", mimeType: "image/png", buffer: withParameters(base, ours) });
  await page.waitForFunction(() => /"ours.png" loaded/.test(document.querySelector('[data-testid="png-settings-info"]')?.textContent ?? ""));
  assert.equal(await info.innerText(), 'Settings of "ours.png" loaded.');
  const loaded = await fields();
  assert.deepEqual(
    [loaded["prompt"], loaded["negative"], loaded["steps"], loaded["seed"], loaded["width"], loaded["scheduler"]],
    ["a cat on a mat", "blurry", "8", "42", "64", "euler-a"],
  );
  assert.equal(await page.getByTestId("mode-txt2img").isChecked(), true);
  // Not a PNG, and a PNG without settings: a clear message.
  await page.getByTestId("png-settings").setInputFiles({ name: "notes.png", mimeType: "image/png", buffer: Buffer.from("not a png") });
  await page.waitForFunction(() => /"notes.png" is not a PNG/.test(document.querySelector('[data-testid="error"]')?.textContent ?? ""));
  await page.getByTestId("png-settings").setInputFiles({ name: "plain.png", mimeType: "image/png", buffer: base });
  await page.waitForFunction(() => /no generation settings/.test(document.querySelector('[data-testid="error"]')?.textContent ?? ""));
});

test("SDXL through the form matches diffusers (tiny-sdxl: two text encoders, text-time conditioning)", { timeout: 600_000 }, async () => {
  await page.goto(appUrl("tiny-sdxl"));
  await waitReady();
  assert.ok(await page.getByTestId("sdxl-options").isVisible(), "the SDXL fields are shown for an SDXL model");
  // Before any weight downloads, the model's line gives the estimate on this GPU (SwiftShader: f32).
  const status = (await page.getByTestId("model-status").textContent()) ?? "";
  console.log(`SDXL model status: ${status}`);
  assert.match(status, /GPU memory about \d/);
  const tensors = `${FIXTURES}/sdxl-runs/txt2img_euler/tensors.safetensors`;
  const { meta, data: image } = readSafetensors(tensors, "image");
  await page.getByTestId("mode-txt2img").check();
  await fill({ ...fixtureFields(meta), scheduler: "euler", width: meta["width"]!, height: meta["height"]! });
  // Empty SDXL fields are diffusers' defaults (prompt_2 = prompt, sizes = the image's); half a size is refused.
  await fill({ "original-width": "1024" });
  await page.getByTestId("generate").click();
  await waitError(/Original size: give both numbers/);
  await fill({ "original-width": "" });
  const { ms } = await generate();
  const pixels = await resultPixels();
  const diff = maxDiff(image, pixels.rgba);
  console.log(`SDXL txt2img via the app: max |app - diffusers| = ${diff.toExponential(2)} (x255: ${(diff * 255).toFixed(1)}), ${ms} ms`);
  assert.ok(diff <= 2e-2, `image diff ${diff}`);
  await page.goto(appUrl("tiny-sd"));
  await waitReady();
  assert.ok(!(await page.getByTestId("sdxl-options").isVisible()), "no SDXL fields for an SD 1.x model");
});
