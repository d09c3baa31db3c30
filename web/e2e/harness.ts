// Shared pieces of the end-to-end tests: Debian's Chromium through playwright-core, the built app, the
// fault-injecting model server on another origin, and a bare worker engine driven from the page.
import { readFileSync } from "node:fs";
import type { Server } from "node:http";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import type { GenerateSettings, Request, WorkerEvent } from "../src/protocol";
import type { EngineStats } from "../src/stats";
import { startModelServer, type ModelServer } from "../scripts/model-server";
import { loopbackOrigins, startServer } from "../scripts/static-server";

export const DIST = process.env["DIST"] ?? fileURLToPath(new URL("../../dist", import.meta.url));
export const FIXTURES = fileURLToPath(new URL("../../tests/fixtures", import.meta.url));
export const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";
// The flags proven on these machines (shared/NOTES.md); --enable-unsafe-webgpu is what exposes WebGPU.
export const ARGS = [
  "--no-sandbox",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
  "--enable-unsafe-webgpu",
];

export interface Harness {
  browser: Browser;
  app: { server: Server; url: string };
  cdn: { server: Server; url: string; models: ModelServer };
  close(): Promise<void>;
}

export async function startHarness(): Promise<Harness> {
  const cdn = await startModelServer({ root: FIXTURES });
  // The built policy has no loopback: the app server adds exactly this model server's origins (its
  // port under both loopback names; the redirect fault sends 127.0.0.1 <-> localhost).
  const app = await startServer({ root: DIST, connectOrigins: loopbackOrigins(cdn.url) });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  return {
    browser,
    app,
    cdn,
    async close() {
      await browser.close();
      app.server.close();
      cdn.server.closeAllConnections();
      cdn.server.close();
    },
  };
}

/** A page of the app with a second, bare engine worker whose events are recorded in `window.__events`. */
export async function openEngine(h: Harness, page?: Page): Promise<EnginePage> {
  return openEngineAt(h.app.url, page ?? (await h.browser.newPage()));
}

/** `openEngine` on the app served at `appUrl`, in `page` (a browser context the harness did not start). */
export async function openEngineAt(appUrl: string, page: Page): Promise<EnginePage> {
  // tsx (esbuild keepNames) wraps functions in __name(...): give evaluated code a no-op one.
  await page.addInitScript("globalThis.__name = (f) => f;");
  const logs: string[] = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${String(e)}`));
  await page.goto(appUrl);
  const engine = new EnginePage(page, logs);
  await engine.startWorker();
  return engine;
}

export type Recorded = WorkerEvent & { at: number };

/** Whether `event` ends the request at the head of the bare worker's queue. The bare engine sends
 * requests without ids, as a minimal client would, so the tests read the answer from the event's type
 * (the page's client, engine.ts, matches answers by id instead). */
export function isFinal(event: WorkerEvent): boolean {
  switch (event.type) {
    case "ready":
    case "progress":
    case "preview":
    case "memory":
    case "lorasApplied":
      return false;
    case "result":
      return event.index + 1 >= event.count;
    default:
      return true;
  }
}
/** The name of the bare engine worker, which tells it apart from the app page's own. */
const ENGINE_WORKER = "websd-engine-under-test";

export class EnginePage {
  constructor(
    readonly page: Page,
    readonly logs: string[],
  ) {}

  async startWorker(): Promise<void> {
    await this.page.evaluate((name) => {
      const w = window as unknown as { __events: unknown[]; __worker: Worker };
      w.__events = [];
      w.__worker = new Worker("./worker.js", { type: "module", name });
      w.__worker.onmessage = (m: MessageEvent) => {
        const e = m.data as { type: string; png?: Uint8Array; rgba?: Uint8Array };
        // Byte arrays stay in the page (window.__pngs); the test reads them through decodePng.
        if (e.png) {
          const pngs = ((window as unknown as { __pngs?: Uint8Array[] }).__pngs ??= []);
          pngs.push(e.png);
          w.__events.push({ ...e, png: pngs.length - 1, at: performance.now() });
        } else if (e.rgba) {
          w.__events.push({ ...e, rgba: e.rgba.length, at: performance.now() });
        } else {
          w.__events.push({ ...e, at: performance.now() });
        }
      };
    }, ENGINE_WORKER);
    await this.waitFor((e) => e.type === "ready", 60_000);
  }

  /** The engine worker's `self.websdStats` (worker.ts), read through the DevTools protocol: it answers
   * while a request is still running, between the worker's awaits. */
  async stats(): Promise<{ gpuBuffers: number; gpuBufferBytes: number; largestGpuBuffer: number; wasmMemoryBytes: number; weightChunkReads: number }> {
    for (const worker of this.page.workers()) {
      if ((await worker.evaluate(() => self.name)) !== ENGINE_WORKER) continue;
      return worker.evaluate(() => {
        const s = (self as unknown as { websdStats: EngineStats }).websdStats;
        return {
          gpuBuffers: s.gpuBuffers,
          gpuBufferBytes: s.gpuBufferBytes,
          largestGpuBuffer: s.largestGpuBuffer,
          wasmMemoryBytes: s.wasmMemoryBytes(),
          weightChunkReads: s.weightChunkReads(),
        };
      });
    }
    throw new Error("the engine worker is gone");
  }

  async events(): Promise<Recorded[]> {
    return this.eventsFrom(0);
  }

  /** The events recorded from index `at` on (only those cross the DevTools protocol). */
  private async eventsFrom(at: number): Promise<Recorded[]> {
    return this.page.evaluate((at) => (window as unknown as { __events: Recorded[] }).__events.slice(at), at);
  }

  async send(request: Request): Promise<void> {
    await this.page.evaluate((r) => (window as unknown as { __worker: Worker }).__worker.postMessage(r), request);
  }

  /** Waits for the first event after index `from` that matches. Each poll fetches only the events
   * that came since the last one: a download or load records thousands of progress events, and
   * copying them all through the DevTools protocol every 100 ms took CPU from what was being timed. */
  async waitFor(match: (e: Recorded) => boolean, timeoutMs: number, from = 0): Promise<Recorded> {
    const deadline = Date.now() + timeoutMs;
    for (let at = from; ; ) {
      const fresh = await this.eventsFrom(at);
      const found = fresh.find(match);
      if (found) return found;
      at += fresh.length;
      if (Date.now() > deadline) {
        const events = await this.events();
        throw new Error(
          `timed out; last events: ${JSON.stringify(events.slice(-5))}\nconsole:\n${this.logs.slice(-20).join("\n")}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Sends `request` and waits for its final event (`isFinal`). */
  async call(request: Request, timeoutMs = 120_000): Promise<{ final: Recorded; events: Recorded[] }> {
    const from = await this.page.evaluate(() => (window as unknown as { __events: Recorded[] }).__events.length);
    await this.send(request);
    const final = await this.waitFor(isFinal, timeoutMs, from);
    const events = await this.eventsFrom(from);
    return { final, events };
  }

  /** `request` (`addLora`, `addEmbedding`) with the bytes of the file at `path`, handed over as the page
   * hands a picked file's. */
  async callWithFile(
    request: Extract<Request, { type: "addLora" | "addEmbedding" }>,
    path: string,
    timeoutMs = 120_000,
  ): Promise<{ final: Recorded; events: Recorded[] }> {
    const from = await this.page.evaluate(() => (window as unknown as { __events: Recorded[] }).__events.length);
    const base64 = readFileSync(path).toString("base64");
    await this.page.evaluate(
      ([request, base64]) => {
        const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
        (window as unknown as { __worker: Worker }).__worker.postMessage({ ...request, bytes }, [bytes.buffer]);
      },
      [request, base64] as const,
    );
    const final = await this.waitFor(isFinal, timeoutMs, from);
    return { final, events: await this.eventsFrom(from) };
  }

  /** RGBA pixels of the n-th PNG received, decoded by the browser. */
  async decodePng(n: number): Promise<{ width: number; height: number; rgba: number[] }> {
    return this.page.evaluate(async (i) => {
      const png = (window as unknown as { __pngs: Uint8Array<ArrayBuffer>[] }).__pngs[i]!;
      const bitmap = await createImageBitmap(new Blob([png], { type: "image/png" }), {
        colorSpaceConversion: "none",
        premultiplyAlpha: "none",
      });
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const ctx = canvas.getContext("2d")!;
      ctx.drawImage(bitmap, 0, 0);
      const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
      return { width: bitmap.width, height: bitmap.height, rgba: Array.from(data) };
    }, n);
  }
}

/** A safetensors file's header metadata and one f32 tensor. */
export function readSafetensors(file: string, name: string): { meta: Record<string, string>; shape: number[]; data: Float32Array } {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const entry = header[name] as { dtype: string; shape: number[]; data_offsets: [number, number] };
  if (entry.dtype !== "F32") throw new Error(`${name}: ${entry.dtype}, F32 expected`);
  const [a, b] = entry.data_offsets;
  const bytes = buf.subarray(8 + n + a, 8 + n + b);
  const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  return { meta: (header["__metadata__"] ?? {}) as Record<string, string>, shape: entry.shape, data };
}

/** Largest |a - b/255| over RGB, with `a` the fixture image [H, W, 3] in [0, 1]. */
export function maxDiff(fixture: Float32Array, rgba: number[]): number {
  let max = 0;
  for (let p = 0; p < fixture.length / 3; p++) {
    for (let c = 0; c < 3; c++) max = Math.max(max, Math.abs(fixture[p * 3 + c]! - rgba[p * 4 + c]! / 255));
  }
  return max;
}

/** A fixture run's settings (from its tensors' metadata) and diffusers' images (`[batch, h, w, 3]`).
 * `dir`: `runs` (the recorded runs) or `e2e-runs` (images only, for sizes the recorded runs lack). */
export function fixture(run: string, dir = "runs"): { settings: GenerateSettings; image: Float32Array } {
  const { meta, data } = readSafetensors(`${FIXTURES}/${dir}/${run}/tensors.safetensors`, "image");
  return {
    settings: {
      ...(meta["batch"] ? { batch: Number(meta["batch"]) } : {}),
      prompt: meta["prompt"]!,
      negativePrompt: meta["negative_prompt"] ?? "",
      steps: Number(meta["steps"]),
      guidance: Number(meta["guidance_scale"]),
      seed: Number(meta["seed"]),
      width: Number(meta["width"]),
      height: Number(meta["height"]),
      scheduler: "ddim",
    },
    image: data,
  };
}

/** Where a generate request's time went (ms), from its events' page timestamps: `load` is the model
 * load when the request had to do it, `firstStep` is included in `denoise`. */
export function generationPhases(
  events: Recorded[],
  final: Recorded,
): { load: number; encode: number; firstStep: number; denoise: number; decode: number } {
  const at = (match: (x: Recorded) => boolean): number => events.find(match)?.at ?? NaN;
  const t0 = events[0]?.at ?? NaN;
  const encodeStart = at((x) => x.type === "progress" && x.phase === "encode");
  const encoded = at((x) => x.type === "progress" && x.phase === "encode" && x.done === 1);
  const decodeStart = at((x) => x.type === "progress" && x.phase === "decode");
  return {
    load: encodeStart - t0,
    encode: encoded - encodeStart,
    firstStep: at((x) => x.type === "progress" && x.phase === "denoise") - encoded,
    denoise: decodeStart - encoded,
    decode: final.at - decodeStart,
  };
}
