// The benchmark's whole-image and memory sections (run.ts calls them): our worker engine alone, driven
// like the e2e tests drive it (harness.ts), with phase times from the events' page timestamps and the
// GPU/heap counters from the worker's `self.websdStats` (worker.ts).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import type { DownloadReport, GenerateSettings } from "../src/protocol";
import { chromiumUsage, formatUsage, usageSince, type ProcessUsage } from "./procstat";
import { startModelServer } from "../scripts/model-server";
import { loopbackOrigins, startServer } from "../scripts/static-server";
import { ARGS, CHROMIUM, DIST, fixture, generationPhases, maxDiff, openEngine, openEngineAt, type EnginePage, type Harness } from "../e2e/harness";

const MIB = 2 ** 20;

export interface ImageRun {
  /** "cold": a new browser profile, the model downloaded from the local server; "warm": a new worker
   * in the same profile, the model read from IndexedDB. */
  kind: "cold" | "warm";
  downloadMs: number;
  loadMs: number;
  encodeMs: number;
  denoiseMs: number;
  firstStepMs: number;
  decodeMs: number;
  /** From the first request to the image's arrival in the page. */
  totalMs: number;
  maxAbsVsDiffusers: number;
}

export interface ImageSection {
  model: string;
  settings: GenerateSettings;
  runs: ImageRun[];
}

/** Time to first image, cold then warm, with the fixtures' tiny model and `runs/txt2img_ddim`'s settings
 * (so the image is also checked against diffusers'). */
export async function wholeImage(h: Harness, reps: number): Promise<ImageSection> {
  const { settings, image } = fixture("txt2img_ddim");
  const model = `${h.cdn.url}tiny-sd/manifest.json`;
  const runs: ImageRun[] = [];
  for (let rep = 0; rep < reps; rep++) {
    // A fresh context is a fresh profile: empty IndexedDB, HTTP cache and shader caches.
    const context = await h.browser.newContext();
    try {
      for (const kind of ["cold", "warm"] as const) {
        const e = await openEngine(h, await context.newPage());
        const run = await timeImage(e, model, settings, image, kind);
        console.error(`whole image ${kind}: ${JSON.stringify(run)}`);
        runs.push(run);
        await e.page.close();
      }
    } finally {
      await context.close();
    }
  }
  return { model: "tiny-sd (fixtures), fp16 files, f32 compute (no shader-f16)", settings, runs };
}

async function timeImage(e: EnginePage, model: string, settings: GenerateSettings, image: Float32Array, kind: ImageRun["kind"]): Promise<ImageRun> {
  const t0 = Date.now();
  const ready = await e.call({ type: "ensureModel", manifestUrl: model, variant: "fp16" }, 600_000);
  if (ready.final.type !== "modelReady") throw new Error(`ensureModel: ${JSON.stringify(ready.final)}`);
  const downloadMs = Date.now() - t0;
  const loaded = await e.call({ type: "load", model, variant: "fp16" }, 600_000);
  if (loaded.final.type !== "modelLoaded") throw new Error(`load: ${JSON.stringify(loaded.final)}`);
  const pngs = (await e.events()).filter((x) => x.type === "result").length;
  const { final, events } = await e.call({ type: "generate", model, variant: "fp16", settings }, 1_800_000);
  if (final.type !== "result") throw new Error(`generate: ${JSON.stringify(final)}`);
  const totalMs = Date.now() - t0;
  const p = generationPhases(events, final);
  const decoded = await e.decodePng(pngs);
  return {
    kind,
    downloadMs,
    loadMs: loaded.final.loadMs,
    encodeMs: p.encode,
    firstStepMs: p.firstStep,
    denoiseMs: p.denoise,
    decodeMs: p.decode,
    totalMs,
    maxAbsVsDiffusers: maxDiff(image, decoded.rgba),
  };
}

export interface MemorySection {
  model: string;
  totalBytes: number;
  downloadMs: number;
  /** A plain read of the same IndexedDB chunks in the page, as many in flight as the loader keeps: no
   * decoding, no upload. */
  idbReadMs: number;
  loadMs: number;
  /** Median of the reps' load / plain read ratios (the two medians above are each over the reps). */
  loadRatio: number;
  loadSamples: { idbReadMs: number; loadMs: number; readUsage?: ProcessUsage; loadUsage?: ProcessUsage }[];
  /** The wasm heap's peak by the end of the load. */
  wasmMemoryAfterLoad: number;
  gpuAfterLoad: { buffers: number; bytes: number; largest: number };
  /** The engine's own account of the load ("websd: … loaded in …" console lines). */
  loadBreakdown: string[];
  /** A 512 px, 1-step, guided generation, watched until no new buffer came for `quietMs`. */
  at512: { seenPhases: string[]; watchedMs: number; finished: boolean; largest: number; buffers: number; bytes: number; wasmMemory: number };
}

/** The full-size SD1.5-shaped model (`dir`, 2.1 GB fp16 random weights from ../shared/oracle): download
 * into IndexedDB, load against a plain read of the same bytes, the heap's peak, the GPU buffers of the
 * load and of a 512 px generation. SwiftShader needs hours for one full-size U-Net step, but the buffers
 * are created as the work is queued: the counters stop moving long before, and are read then. */
/** Chunk reads the loader keeps in flight (`READ_AHEAD` + 1 in crate/src/web/load.rs): the plain read
 * gets the same, or it would time IndexedDB's latency rather than its throughput. */
const READS_IN_FLIGHT = 4;

/** Reads every chunk of `files` as stored (a Blob's contents, or a typed array as older stores hold),
 * [`READS_IN_FLIGHT`] at a time, in the page: no decoding, no upload. */
async function plainRead(e: EnginePage, id: string, files: string[]): Promise<number> {
  return e.page.evaluate(
    async ([id, files, inFlight]) => {
      const db = await new Promise<IDBDatabase>((ok, err) => {
        const r = indexedDB.open("websd-weights");
        r.onsuccess = () => ok(r.result);
        r.onerror = () => err(r.error);
      });
      const chunk = (f: string, i: number) =>
        new Promise<unknown>((ok, err) => {
          const r = db.transaction("chunks").objectStore("chunks").get([id, f, i]);
          r.onsuccess = () => ok(r.result);
          r.onerror = () => err(r.error);
        }).then((v) => (v instanceof Blob ? v.arrayBuffer() : v));
      const t0 = performance.now();
      for (const f of files) {
        const reads = Array.from({ length: inFlight }, (_, i) => chunk(f, i));
        for (let next = inFlight; ; next++) {
          if (!(await reads.shift())) break;
          reads.push(chunk(f, next));
        }
        await Promise.all(reads);
      }
      db.close();
      return performance.now() - t0;
    },
    [id, files, READS_IN_FLIGHT] as const,
  );
}

export async function memory(dir: string, quietMs: number, reps: number): Promise<MemorySection> {
  const cdn = await startModelServer({ root: path.dirname(path.resolve(dir)) });
  const app = await startServer({ root: DIST, connectOrigins: loopbackOrigins(cdn.url) });
  // A profile on disk: an ephemeral context keeps IndexedDB in memory and refuses writes past ~1.4 GB.
  const profile = mkdtempSync(path.join(tmpdir(), "websd-bench-profile-"));
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS });
  try {
    let e = await openEngineAt(app.url, context.pages()[0] ?? (await context.newPage()));
    const id = `${cdn.url}${path.basename(path.resolve(dir))}/manifest.json`;
    let t = Date.now();
    const ready = await e.call({ type: "ensureModel", manifestUrl: id, variant: "fp16" }, 3_600_000);
    if (ready.final.type !== "modelReady") throw new Error(`ensureModel: ${JSON.stringify(ready.final)}`);
    const downloadMs = Date.now() - t;
    const report: DownloadReport = ready.final.report;
    const weights = report.files.filter((f) => f.endsWith(".safetensors"));
    // Each rep: a plain read of the chunks in the page, then a load in a new worker (the page before it
    // closed, with its 4 GB of GPU buffers), alternating, since both vary with what the OS has cached.
    const samples: MemorySection["loadSamples"] = [];
    let loaded: Awaited<ReturnType<typeof e.call>> | undefined;
    for (let rep = 0; rep < reps; rep++) {
      if (rep > 0) {
        const next = await openEngineAt(app.url, await context.newPage());
        await e.page.close();
        e = next;
      }
      const u0 = chromiumUsage();
      const idbReadMs = await plainRead(e, id, weights);
      const u1 = chromiumUsage();
      loaded = await e.call({ type: "load", model: id, variant: "fp16" }, 3_600_000);
      if (loaded.final.type !== "modelLoaded") throw new Error(`load: ${JSON.stringify(loaded.final)}\n${e.logs.slice(-20).join("\n")}`);
      const [readUsage, loadUsage] = [usageSince(u0, u1), usageSince(u1, chromiumUsage())];
      samples.push({ idbReadMs, loadMs: loaded.final.loadMs, readUsage, loadUsage });
      console.error(`memory: rep ${rep}: plain read ${idbReadMs.toFixed(0)} ms (${formatUsage(readUsage)}), load ${loaded.final.loadMs} ms (${formatUsage(loadUsage)})`);
    }
    if (loaded?.final.type !== "modelLoaded") throw new Error("memory: no load ran (reps < 1)");
    console.error(`memory: downloaded ${(report.totalBytes / MIB).toFixed(0)} MiB in ${downloadMs} ms`);
    const middle = <T>(xs: T[], key: (x: T) => number): number => {
      const v = xs.map(key).sort((a, b) => a - b);
      return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
    };
    const afterLoad = await e.stats();
    console.error(`memory: loaded in ${loaded.final.loadMs} ms; ${JSON.stringify(afterLoad)}`);

    const from = (await e.events()).length;
    t = Date.now();
    await e.send({
      type: "generate",
      model: id,
      variant: "fp16",
      settings: { prompt: "a photo of an astronaut riding a horse", negativePrompt: "blurry", steps: 1, guidance: 7.5, seed: 0, width: 512, height: 512, scheduler: "ddim" },
    });
    let last = await e.stats();
    let lastChange = Date.now();
    let finished = false;
    const seen = new Set<string>();
    for (;;) {
      await new Promise((r) => setTimeout(r, 5_000));
      const events = (await e.events()).slice(from);
      for (const x of events) seen.add(x.type === "progress" ? `${x.phase} ${x.done}/${x.total}` : x.type);
      if (events.some((x) => x.type === "result" || x.type === "error" || x.type === "cancelled")) finished = true;
      const now = await e.stats();
      if (now.gpuBuffers !== last.gpuBuffers) lastChange = Date.now();
      last = now;
      if (finished || (seen.has("encode 1/1") && Date.now() - lastChange > quietMs)) break;
    }
    console.error(`memory: 512 px after ${Date.now() - t} ms: ${JSON.stringify(last)}; events ${[...seen].join(", ")}`);
    return {
      model: `${path.basename(path.resolve(dir))}: SD 1.5's configs (CLIP-L, 860M U-Net, VAE), random fp16 weights`,
      totalBytes: report.totalBytes,
      downloadMs,
      idbReadMs: middle(samples, (x) => x.idbReadMs),
      loadMs: middle(samples, (x) => x.loadMs),
      loadRatio: middle(samples, (x) => x.loadMs / x.idbReadMs),
      loadSamples: samples,
      wasmMemoryAfterLoad: loaded.final.wasmMemoryBytes,
      gpuAfterLoad: { buffers: afterLoad.gpuBuffers, bytes: afterLoad.gpuBufferBytes, largest: afterLoad.largestGpuBuffer },
      loadBreakdown: e.logs.filter((l) => l.includes("websd:") && l.includes("loaded in")),
      at512: {
        seenPhases: [...seen],
        watchedMs: Date.now() - t,
        finished,
        largest: last.largestGpuBuffer,
        buffers: last.gpuBuffers,
        bytes: last.gpuBufferBytes,
        wasmMemory: last.wasmMemoryBytes,
      },
    };
  } finally {
    // Closing the context ends the worker and the queued GPU work with it.
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    cdn.server.closeAllConnections();
    cdn.server.close();
    app.server.close();
  }
}
