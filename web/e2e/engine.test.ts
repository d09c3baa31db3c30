// The worker engine end to end in headless Chromium (SwiftShader WebGPU, dedicated worker): the tiny
// model downloaded from the fault-injecting model server (another origin) into IndexedDB, loaded tensor
// by tensor, and run against diffusers' fixtures; resumption after every fault type and a reload;
// quota; cancellation; device loss; no WebGPU.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { chromium } from "playwright-core";
import type { DownloadReport, Request } from "../src/protocol";
import { ARGS, FIXTURES, fixture, generationPhases, isFinal, maxDiff, openEngine, readSafetensors, startHarness, type EnginePage, type Harness, type Recorded } from "./harness";

const UNET16 = "tiny-sd/unet/diffusion_pytorch_model.fp16.safetensors";
const CHUNK = 256 * 1024;
let h: Harness;

before(async () => {
  h = await startHarness();
});
after(async () => {
  await h?.close();
});

function manifestUrl(run: string): string {
  return `${h.cdn.url}tiny-sd/manifest.json?run=${run}`;
}

function ensure(run: string, extra: Partial<Extract<Request, { type: "ensureModel" }>> = {}): Request {
  return { type: "ensureModel", manifestUrl: manifestUrl(run), variant: "fp16", chunkBytes: CHUNK, stallTimeoutMs: 5000, ...extra };
}

/** The txt2img_ddim fixture's settings (from its metadata) and image. */
/** SHA-256 of a file as stored in IndexedDB (chunks concatenated), computed in the page. */
async function storedSha256(e: EnginePage, id: string, path: string): Promise<string> {
  return e.page.evaluate(
    async ([id, path]) => {
      const db = await new Promise<IDBDatabase>((ok, err) => {
        const r = indexedDB.open("websd-weights");
        r.onsuccess = () => ok(r.result);
        r.onerror = () => err(r.error);
      });
      const chunks = await new Promise<BlobPart[]>((ok, err) => {
        const r = db
          .transaction("chunks")
          .objectStore("chunks")
          .getAll(IDBKeyRange.bound([id, path], [id, path + "\0"], false, true));
        r.onsuccess = () => ok(r.result as BlobPart[]);
        r.onerror = () => err(r.error);
      });
      db.close();
      const digest = await crypto.subtle.digest("SHA-256", await new Blob(chunks).arrayBuffer());
      return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    },
    [id, path] as const,
  );
}

/** Every file record and its chunks agree: `stored` bytes are exactly there, `complete` means verified;
 * chunks are Blobs (a read then copies each byte once; crate/src/web/store.rs). `stored` has each file's bytes
 * stored so far. */
async function storeConsistent(
  e: EnginePage,
  id: string,
): Promise<{ files: number; complete: number; problems: string[]; stored: Record<string, number> }> {
  return e.page.evaluate(async (id) => {
    const db = await new Promise<IDBDatabase>((ok, err) => {
      const r = indexedDB.open("websd-weights");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => err(r.error);
    });
    const get = <T>(store: string, range: IDBKeyRange) =>
      new Promise<T[]>((ok, err) => {
        const r = db.transaction(store).objectStore(store).getAll(range);
        r.onsuccess = () => ok(r.result as T[]);
        r.onerror = () => err(r.error);
      });
    type F = { path: string; size: number; stored: number; chunkBytes: number; complete: boolean };
    const files = await get<F>("files", IDBKeyRange.bound([id], [id + "\0"], false, true));
    const problems: string[] = [];
    for (const f of files) {
      const chunks = await get<Blob>("chunks", IDBKeyRange.bound([id, f.path], [id, f.path + "\0"], false, true));
      const notBlobs = chunks.filter((c) => !(c instanceof Blob)).length;
      if (notBlobs) problems.push(`${f.path}: ${notBlobs} chunks stored as something other than a Blob`);
      const bytes = chunks.reduce((n, c) => n + (c instanceof Blob ? c.size : 0), 0);
      if (bytes !== f.stored) problems.push(`${f.path}: ${bytes} bytes in chunks, record says ${f.stored}`);
      if (f.complete && f.stored !== f.size) problems.push(`${f.path}: complete with ${f.stored} of ${f.size}`);
    }
    db.close();
    const stored = Object.fromEntries(files.map((f) => [f.path, f.stored]));
    return { files: files.length, complete: files.filter((f) => f.complete).length, problems, stored };
  }, id);
}

async function generateAndCompare(
  e: EnginePage,
  model: string,
  variant: "fp16" | "fp32",
  run: string,
  dir = "runs",
): Promise<number> {
  const { settings, image } = fixture(run, dir);
  const pngsBefore = (await e.events()).filter((x) => x.type === "result").length;
  const { final, events } = await e.call({ type: "generate", model, variant, settings }, 600_000);
  assert.equal(final.type, "result", JSON.stringify(final));
  const steps = events.filter((x) => x.type === "progress" && x.phase === "denoise");
  assert.equal(steps.length, settings.steps, "one progress event per step");
  // One result event per image of the batch, each compared with its own image of diffusers' batch.
  const batch = settings.batch ?? 1;
  const results = (await e.events()).filter((x) => x.type === "result").length - pngsBefore;
  assert.equal(results, batch, "one result per image");
  let diff = 0;
  for (let i = 0; i < batch; i++) {
    const decoded = await e.decodePng(pngsBefore + i);
    assert.deepEqual([decoded.width, decoded.height], [settings.width, settings.height]);
    const size = decoded.width * decoded.height * 3;
    diff = Math.max(diff, maxDiff(image.subarray(i * size, (i + 1) * size), decoded.rgba));
  }
  const ms = final.type === "result" ? final.elapsedMs : NaN;
  const phases = generationPhases(events, final);
  console.log(`${run} ${variant} phases (ms): ${JSON.stringify(Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, Math.round(v)])))}`);
  console.log(`${run} ${variant}: max |diff| ${diff.toExponential(2)} vs diffusers, ${ms.toFixed(0)} ms`);
  return diff;
}

describe("worker engine", () => {
  test("tiny model: download into IndexedDB, load, txt2img from the fp32 files matches diffusers", { timeout: 600_000 }, async () => {
    const e = await openEngine(h);
    h.cdn.models.resetStats();
    const { final } = await e.call(ensure("clean"));
    assert.equal(final.type, "modelReady", JSON.stringify(final));
    const report = (final as { report: DownloadReport }).report;
    assert.equal(report.retries, 0);
    assert.equal(report.fetchedBytes, report.totalBytes);
    assert.ok(!report.files.some((f) => f.endsWith("unet/diffusion_pytorch_model.safetensors")), "fp32 not fetched");
    // A second ensure fetches nothing.
    const again = await e.call(ensure("clean"));
    assert.equal((again.final as { report: DownloadReport }).report.fetchedBytes, 0);

    // The fp16 files are generated from, and compared, through the app's form (app.test.ts).
    const ready32 = await e.call(ensure("clean", { variant: "fp32" }));
    assert.equal(ready32.final.type, "modelReady");
    const fp32 = await generateAndCompare(e, manifestUrl("clean"), "fp32", "txt2img_ddim");
    assert.ok(fp32 <= 2e-2, `fp32 image off by ${fp32}`);
    // A batch of 2 under guidance (a U-Net batch of 4), 1 step.
    const batch = await generateAndCompare(e, manifestUrl("clean"), "fp32", "txt2img_ddim_batch2", "e2e-runs");
    assert.ok(batch <= 2e-2, `a batch of 2 off by ${batch}`);

    const listed = await e.call({ type: "listModels" });
    assert.equal(listed.final.type, "models");
    const model = (listed.final as { models: { id: string; ready: boolean; storedBytes: number }[] }).models.find(
      (m) => m.id === manifestUrl("clean"),
    );
    assert.ok(model?.ready);
    console.log(`stored: ${model!.storedBytes} bytes`);
    assert.deepEqual((await storeConsistent(e, manifestUrl("clean"))).problems, []);
    await e.page.close();
  });

  test("LoRAs and embeddings: stored from the page's bytes and from a URL; merged, re-weighted and removed without reading the model again; an embedding where its word is", { timeout: 600_000 }, async () => {
    const e = await openEngine(h);
    try {
      const model = manifestUrl("lora");
      assert.equal((await e.call(ensure("lora", { variant: "fp32" }))).final.type, "modelReady");
      const lora = (file: string): string => `${h.cdn.url}lora/${file}`;
      type Settings = Extract<Request, { type: "generate" }>["settings"];
      const base: Settings = { prompt: "a cat", negativePrompt: "blurry", steps: 4, guidance: 7.5, seed: 3, width: 16, height: 16, scheduler: "ddim" };
      const image = async (settings: Settings): Promise<{ rgba: number[]; applied?: Recorded }> => {
        const n = (await e.events()).filter((x) => x.type === "result").length;
        const { final, events } = await e.call({ type: "generate", model, variant: "fp32", settings }, 300_000);
        assert.equal(final.type, "result", JSON.stringify(final));
        const applied = events.find((x) => x.type === "lorasApplied");
        return { rgba: (await e.decodePng(n)).rgba, ...(applied ? { applied } : {}) };
      };
      const maxPixelDiff = (a: number[], b: number[]): number => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
      const plain = await image(base);
      assert.equal(plain.applied, undefined, "nothing to merge, nothing merged");

      // Stored from the page's bytes (a picked file) and from a URL; refused when they are not what
      // they should be.
      const peft = await e.callWithFile({ type: "addLora", name: "peft" }, `${FIXTURES}/lora/lora_peft.safetensors`);
      assert.equal(peft.final.type, "loraAdded", JSON.stringify(peft.final));
      const added = (peft.final as Extract<Recorded, { type: "loraAdded" }>).lora;
      assert.deepEqual([added.unetLayers, added.textEncoderLayers, added.source], [84, 25, "a file"]);
      const code = (r: { final: Recorded }): string => (r.final.type === "error" ? r.final.code : r.final.type);
      const wrongHash = await e.call({ type: "addLora", name: "kohya", url: lora("lora_kohya.safetensors"), sha256: "0".repeat(64) });
      assert.equal(code(wrongHash), "integrity", JSON.stringify(wrongHash.final));
      const kohya = await e.call({ type: "addLora", name: "kohya", url: lora("lora_kohya.safetensors") });
      assert.equal(kohya.final.type, "loraAdded", JSON.stringify(kohya.final));
      const notLora = await e.call({ type: "addLora", name: "unet", url: `${h.cdn.url}tiny-sd/unet/diffusion_pytorch_model.safetensors` });
      assert.equal(code(notLora), "invalid", JSON.stringify(notLora.final));
      assert.match(JSON.stringify(notLora.final), /is not a LoRA tensor/);
      const badName = await e.call({ type: "addLora", name: "a:b", url: lora("lora_kohya.safetensors") });
      assert.equal(code(badName), "invalid", JSON.stringify(badName.final));
      const offList = await e.call({ type: "addLora", name: "x", url: "https://example.com/x.safetensors" });
      assert.match(JSON.stringify(offList.final), /not an allowed model origin/);
      const listed = await e.call({ type: "listLoras" });
      assert.deepEqual(
        (listed.final as Extract<Recorded, { type: "loras" }>).loras.map((l) => [l.name, l.size]),
        [
          ["kohya", 406100],
          ["peft", 391472],
        ],
      );

      // Merged, re-weighted, named by a prompt tag, swapped for the kohya file, removed: the model's
      // chunks are not read again.
      const reads = (await e.stats()).weightChunkReads;
      assert.ok(reads > 0, "the model was read from IndexedDB once");
      const full = await image({ ...base, loras: [{ name: "peft", weight: 1 }] });
      const applied = full.applied as Extract<Recorded, { type: "lorasApplied" }>;
      console.log(`LoRA merged: ${applied.adaptedWeights} weights, ${applied.keptBytes} bytes kept, ${applied.ms.toFixed(0)} ms`);
      assert.equal(applied.adaptedWeights, 84 + 25);
      const half = await image({ ...base, loras: [{ name: "peft", weight: 0.5 }] });
      const tagged = await image({ ...base, prompt: "<lora:peft:1>a cat" });
      // kohya's file holds the same matrices with alpha 2 of rank 4: at weight 2 the factor is 1, as peft's at 1.
      const swapped = await image({ ...base, loras: [{ name: "kohya", weight: 2 }] });
      const off = await image(base);
      const moved = [maxPixelDiff(full.rgba, plain.rgba), maxPixelDiff(half.rgba, plain.rgba), maxPixelDiff(full.rgba, half.rgba)];
      console.log(`LoRA: max pixel change at 1 / at 0.5 / between them: ${moved.join(" / ")}`);
      assert.ok(moved.every((m) => m >= 4), "each weight changes the image (by 4/255 at least)");
      assert.deepEqual(tagged.rgba, full.rgba, "a <lora:peft:1> tag = the list's peft at 1");
      assert.deepEqual(swapped.rgba, full.rgba, "kohya naming lands on the same weights");
      assert.deepEqual(off.rgba, plain.rgba, "removed: the plain image exactly");
      assert.deepEqual((off.applied as Extract<Recorded, { type: "lorasApplied" }>).loras, []);
      assert.equal((await e.stats()).weightChunkReads, reads, "no chunk of the model read again");

      const missing = await e.call({ type: "generate", model, variant: "fp32", settings: { ...base, loras: [{ name: "nope", weight: 1 }] } });
      assert.equal(code(missing), "not-stored", JSON.stringify(missing.final));
      const negativeTag = await e.call({ type: "generate", model, variant: "fp32", settings: { ...base, negativePrompt: "<lora:peft:1>" } });
      assert.equal(code(negativeTag), "invalid", JSON.stringify(negativeTag.final));
      assert.equal((await e.call({ type: "deleteLora", name: "kohya" })).final.type, "loraDeleted");
      const after = await e.call({ type: "listLoras" });
      assert.deepEqual((after.final as Extract<Recorded, { type: "loras" }>).loras.map((l) => l.name), ["peft"]);

      // A textual-inversion embedding (A1111's emb_params file, diffusers' load_textual_inversion as the
      // reference): used by a prompt with its word, at 64 px as the fixture; deleted, the word is words.
      const run = `${FIXTURES}/textual_inversion/run.safetensors`;
      const { meta, data } = readSafetensors(run, "image");
      const token = meta["token"]!;
      const bad = await e.callWithFile({ type: "addEmbedding", token: "two words" }, `${FIXTURES}/textual_inversion/tiny-style.safetensors`);
      assert.equal(code(bad), "invalid", JSON.stringify(bad.final));
      const ti = await e.callWithFile({ type: "addEmbedding", token }, `${FIXTURES}/textual_inversion/tiny-style.safetensors`);
      assert.equal(ti.final.type, "embeddingAdded", JSON.stringify(ti.final));
      assert.deepEqual(
        [(ti.final as Extract<Recorded, { type: "embeddingAdded" }>).embedding.vectors, (ti.final as Extract<Recorded, { type: "embeddingAdded" }>).embedding.width],
        [2, 32],
      );
      const tiSettings: Settings = {
        prompt: meta["prompt"]!,
        negativePrompt: meta["negative_prompt"]!,
        steps: Number(meta["num_inference_steps"]),
        guidance: Number(meta["guidance_scale"]),
        seed: Number(meta["seed"]),
        width: 64,
        height: 64,
        scheduler: "ddim",
      };
      const withWord = await image(tiSettings);
      const tiDiff = maxDiff(data, withWord.rgba);
      console.log(`embedding ${token}: max |engine - diffusers| = ${tiDiff.toExponential(2)}`);
      assert.ok(tiDiff <= 2e-2, `embedding image off by ${tiDiff}`);
      assert.equal((await e.call({ type: "deleteEmbedding", token })).final.type, "embeddingDeleted");
      const withoutIt = await image(tiSettings);
      assert.ok(maxPixelDiff(withoutIt.rgba, withWord.rgba) > 0, "without the embedding the word is plain words");
      const listedTi = await e.call({ type: "listEmbeddings" });
      assert.deepEqual((listedTi.final as Extract<Recorded, { type: "embeddings" }>).embeddings, []);
    } finally {
      await e.page.close();
    }
  });

  test("256 px: tiny-sd-f8 (a VAE that downsamples by 8, as SD's) matches diffusers", { timeout: 600_000 }, async () => {
    // tiny-sd's VAE downsamples by 2: at 256 px its attention would span 4096-16384 tokens, far beyond
    // SwiftShader on 2 cores. With SD's factor of 8 the latent is 32x32 (e2e-runs/make_e2e_runs.py).
    const e = await openEngine(h);
    const url = `${h.cdn.url}tiny-sd-f8/manifest.json`;
    const ready = await e.call({ type: "ensureModel", manifestUrl: url, variant: "fp32", chunkBytes: CHUNK, stallTimeoutMs: 5000 });
    assert.equal(ready.final.type, "modelReady", JSON.stringify(ready.final));
    // Refused from the configs before any weight is loaded: 16 decoded images of 2048 px are 768 MiB.
    const big = await e.call({ type: "generate", model: url, variant: "fp32", settings: { prompt: "x", width: 2048, height: 2048, batch: 16 } });
    assert.equal((big.final as { code: string }).code, "too-large", JSON.stringify(big.final));
    assert.match((big.final as { message: string }).message, /lower the batch to at most 2/);
    assert.ok(!big.events.some((x) => x.type === "progress" && x.phase === "load"), "refused before loading");
    const diff = await generateAndCompare(e, url, "fp32", "txt2img_ddim_256", "e2e-runs");
    assert.ok(diff <= 2e-2, `256 px off by ${diff}`);
    // The estimate came before the load: the fp32 files' bytes as weights (SwiftShader computes in f32).
    const events = await e.events();
    const memory = events.filter((x) => x.type === "memory").at(-1);
    const firstLoad = events.findIndex((x, i) => i > events.indexOf(memory!) && x.type === "progress" && x.phase === "load");
    assert.ok(memory && firstLoad > 0, "a memory event, then the load");
    const report = (memory as Extract<Recorded, { type: "memory" }>).report;
    const manifest = JSON.parse(await (await fetch(url)).text()) as { files: { path: string; size: number }[] };
    const weights = manifest.files
      .filter((f) => f.path.endsWith(".safetensors") && !f.path.endsWith(".fp16.safetensors"))
      .reduce((sum, f) => sum + f.size, 0);
    console.log(`256 px memory estimate: ${JSON.stringify(report)}; fp32 weights files ${weights} bytes`);
    assert.ok(report.weightBytes > 0.99 * weights && report.weightBytes <= weights, JSON.stringify(report));
    assert.ok(report.activationBytes > 0 && report.largestBufferBytes <= 128 << 20, JSON.stringify(report));
    await e.page.close();
  });

  for (const fault of ["reset:1000000", "truncate:1000000", "status:500", "status:503", "stall:1000000", "flip:1000000"]) {
    test(`resume after ${fault}`, { timeout: 300_000 }, async () => {
      const e = await openEngine(h);
      const run = `fault-${fault.replace(":", "-")}`;
      h.cdn.models.resetStats();
      h.cdn.models.clearFaults();
      h.cdn.models.addFaults([{ path: UNET16, fault }]);
      const { final } = await e.call(ensure(run));
      assert.equal(final.type, "modelReady", JSON.stringify(final));
      assert.equal(h.cdn.models.pendingFaults(), 0, "the fault fired");
      const report = (final as { report: DownloadReport }).report;
      const served = h.cdn.models.stats.bytes[`/${UNET16}`] ?? 0;
      const size = 2888024;
      console.log(`${fault}: retries ${report.retries}, unet bytes served ${served} for ${size}, corrupt ${report.corruptFiles}`);
      if (fault.startsWith("flip")) {
        // The manifest has no per-chunk hashes: a byte flipped in transit fails the file's sha256, and
        // the whole file is fetched again (chunks damaged later, in the store, are repaired one by
        // one: faults.test.ts).
        assert.deepEqual(report.corruptFiles, [UNET16.slice("tiny-sd/".length)]);
        assert.ok(served <= 2 * size);
      } else {
        assert.ok(report.retries >= 1);
        assert.ok(served <= size + CHUNK, `re-fetched more than one chunk: ${served - size} extra bytes`);
      }
      const manifest = JSON.parse(await (await fetch(manifestUrl(run))).text()) as { files: { path: string; sha256: string }[] };
      for (const f of report.files) {
        const want = manifest.files.find((m) => m.path === f)!.sha256;
        assert.equal(await storedSha256(e, manifestUrl(run), f), want, `${f} stored byte-identical`);
      }
      await e.page.close();
    });
  }

  test("a reload mid-download resumes where it stopped", { timeout: 300_000 }, async () => {
    const e = await openEngine(h);
    const run = "reload";
    h.cdn.models.resetStats();
    // The U-Net's response stalls after 1.5 MB; the engine would wait a minute: the page reloads first.
    h.cdn.models.addFaults([{ path: UNET16, fault: "stall:1500000" }]);
    await e.send(ensure(run, { stallTimeoutMs: 60_000 }));
    await e.waitFor((x) => x.type === "progress" && x.file === UNET16.slice(8) && x.done > 0 && (x.bytes ?? 0) > 0, 60_000);
    // Reload once some of the U-Net's chunks are stored (not after a fixed wait).
    const unetStored = async () => ((await storeConsistent(e, manifestUrl(run))).stored[UNET16.slice(8)] ?? 0) > 0;
    for (const deadline = Date.now() + 60_000; !(await unetStored()); ) {
      assert.ok(Date.now() < deadline, "no U-Net chunk stored within 60 s");
      await new Promise((r) => setTimeout(r, 100));
    }
    const before = await storeConsistent(e, manifestUrl(run));
    await e.page.reload();
    await e.startWorker();
    const { final } = await e.call(ensure(run));
    assert.equal(final.type, "modelReady", JSON.stringify(final));
    const served = h.cdn.models.stats.bytes[`/${UNET16}`] ?? 0;
    console.log(`reload: ${before.complete}/${before.files} files complete before; unet bytes served ${served} for 2888024`);
    assert.ok(served <= 2888024 + CHUNK, `re-fetched ${served - 2888024} extra bytes`);
    assert.deepEqual((await storeConsistent(e, manifestUrl(run))).problems, []);
    await e.page.close();
  });

  test("two tabs asking for one model download it once (Web Locks)", { timeout: 300_000 }, async () => {
    // Tabs of one profile: one browser context.
    const context = await h.browser.newContext();
    const [a, b] = [await openEngine(h, await context.newPage()), await openEngine(h, await context.newPage())];
    h.cdn.models.resetStats();
    const [ra, rb] = await Promise.all([a.call(ensure("tabs")), b.call(ensure("tabs"))]);
    const reports = [ra, rb].map((r) => (r.final as { report: DownloadReport }).report);
    assert.ok(reports.every((r) => r !== undefined), JSON.stringify([ra.final, rb.final]));
    const fetched = reports.map((r) => r.fetchedBytes).sort((x, y) => x - y);
    console.log(`two tabs: fetched ${fetched.join(" and ")} bytes of ${reports[0]!.totalBytes}`);
    assert.equal(fetched[0], 0, "the second tab found the files complete");
    assert.equal(h.cdn.models.stats.bytes[`/${UNET16}`], 2888024);
    await context.close();
  });

  test("quota: a clear error with the sizes, and a consistent store", { timeout: 300_000 }, async () => {
    // Chromium's IndexedDB grants writes from a cached "space left" for up to 30 s after it last asked
    // the quota manager, and the app page writes a model record as it starts: an override set after
    // that went unseen in CI. So the quota is overridden before the page loads. Chromium also does
    // not count stored chunks into the origin's usage right away, so many 256 KiB writes all pass a
    // 1 MiB quota: each part below uses chunks bigger than the space left, and one write is refused
    // whatever the usage bookkeeping does. (The worker's navigator.storage.estimate() does not see
    // the override, so the engine's pre-check passes and IndexedDB refuses, as on a full disk.)
    const page = await h.browser.newPage();
    const cdp = await page.context().newCDPSession(page);
    const origin = new URL(h.app.url).origin;
    await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: 1024 * 1024 });
    const e = await openEngine(h, page);
    const small = await e.call(ensure("quota", { chunkBytes: 2 << 20 }));
    assert.equal(small.final.type, "error", JSON.stringify(small.final));
    const err = small.final as { code: string; needed?: number; available?: number; message: string };
    assert.equal(err.code, "quota");
    assert.ok((err.needed ?? 0) > 0 && typeof err.available === "number", err.message);
    console.log(`quota (1 MiB): ${err.message}`);
    assert.deepEqual((await storeConsistent(e, manifestUrl("quota"))).problems, []);
    // Enough to start, too little to finish: the small files fit in the 1 MiB left, the text
    // encoder's 6.5 MB (one 8 MiB chunk) does not, and the browser refuses it mid-download. (The
    // page's usage figure may count more than IndexedDB's own check does: a margin of MiBs.)
    const usage = await page.evaluate(async () => (await navigator.storage.estimate()).usage ?? 0);
    await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: usage + 1024 * 1024 });
    const mid = await e.call(ensure("quota-mid", { variant: "fp32", chunkBytes: 8 << 20 }));
    const state = await storeConsistent(e, manifestUrl("quota-mid"));
    console.log(`quota (usage + 1 MiB): ${(mid.final as { message?: string }).message}; ${state.complete}/${state.files} files complete`);
    assert.equal((mid.final as { code?: string }).code, "quota", JSON.stringify(mid.final));
    assert.ok(state.complete > 0 && state.complete < state.files, "refused part-way, not before the first file");
    assert.deepEqual(state.problems, []);
    // With the quota back, the same request completes.
    await cdp.send("Storage.overrideQuotaForOrigin", { origin });
    const done = await e.call(ensure("quota-mid", { variant: "fp32" }));
    assert.equal(done.final.type, "modelReady", JSON.stringify(done.final));
    assert.deepEqual((await storeConsistent(e, manifestUrl("quota-mid"))).problems, []);
    await page.close();
  });

  test("cancel during denoising stops within one step; the next generate works; a lost device recovers", { timeout: 600_000 }, async () => {
    const e = await openEngine(h);
    const model = manifestUrl("clean");
    assert.equal((await e.call(ensure("clean"))).final.type, "modelReady");
    const { settings } = fixture("txt2img_ddim");
    const from = (await e.events()).length;
    // Kept at the fixture's 64 px: at 16 px, a generate sent right after the cancel failed once with
    // "the staging buffer could not be mapped" (a race between the cancelled run's readback and the
    // next one, since fixed in 41b090f; not re-tested at 16 px).
    await e.send({ type: "generate", model, variant: "fp16", settings: { ...settings, steps: 40 } });
    await e.waitFor((x) => x.type === "progress" && x.phase === "denoise" && x.done >= 2, 300_000, from);
    await e.send({ type: "cancel" });
    const sentAt = (await e.events()).length;
    const cancelled = await e.waitFor(isFinal, 60_000, from);
    assert.equal(cancelled.type, "cancelled", JSON.stringify(cancelled));
    const stepsAfter = (await e.events()).slice(sentAt).filter((x) => x.type === "progress" && x.phase === "denoise");
    assert.ok(stepsAfter.length <= 1, `${stepsAfter.length} steps ran after cancel`);
    console.log(`cancelled in phase ${(cancelled as { phase: string }).phase}, ${stepsAfter.length} step(s) after the request`);
    // SwiftShader needs ~10 s per step of the tiny U-Net: two steps show the engine works again.
    const quick = { type: "generate", model, variant: "fp16", settings: { ...settings, steps: 2 } } as const;
    const next = await e.call(quick, 300_000);
    assert.equal(next.final.type, "result", JSON.stringify(next.final));

    const lost = await e.call({ type: "loseDevice" });
    assert.equal(lost.final.type === "error" && lost.final.code, "device-lost", JSON.stringify(lost.final));
    const afterLoss = await e.call(quick, 300_000);
    assert.equal(afterLoss.final.type, "result", `after a device loss: ${JSON.stringify(afterLoss.final)}`);
    console.log(`after a device loss: generated in ${(afterLoss.final as { elapsedMs: number }).elapsedMs.toFixed(0)} ms (model reloaded)`);
    await e.page.close();
  });

  test("bad requests get typed errors and the worker survives", { timeout: 120_000 }, async () => {
    const e = await openEngine(h);
    const bad = await e.call({ type: "explode" } as unknown as Request);
    assert.equal((bad.final as { code: string }).code, "bad-request");
    const missing = await e.call({ type: "generate", model: "https://nowhere.invalid/m.json", settings: { prompt: "x" } });
    assert.equal((missing.final as { code: string }).code, "not-stored");
    const gone = await e.call(ensure("x", { manifestUrl: `${h.cdn.url}no-such-model/manifest.json` }));
    assert.equal((gone.final as { code: string }).code, "network", JSON.stringify(gone.final));
    assert.equal((await e.call(ensure("clean"))).final.type, "modelReady");
    const size = await e.call({ type: "generate", model: manifestUrl("clean"), variant: "fp16", settings: { prompt: "x", width: 63 } });
    assert.equal((size.final as { code: string }).code, "invalid");
    // A1111 syntax naming a LoRA that is not stored, or that is wrong: typed, before any load.
    const lora = await e.call({ type: "generate", model: manifestUrl("clean"), settings: { prompt: "a cat <lora:detail:0.5>" } });
    assert.equal((lora.final as { code: string }).code, "not-stored", JSON.stringify(lora.final));
    assert.match((lora.final as { message: string }).message, /the LoRA detail is not stored/);
    const weight = await e.call({ type: "generate", model: manifestUrl("clean"), variant: "fp16", settings: { prompt: "(a cat:1.2.3)", width: 16, height: 16, steps: 1 } });
    assert.equal((weight.final as { code: string }).code, "invalid", JSON.stringify(weight.final));
    assert.match((weight.final as { message: string }).message, /"1\.2\.3" in "\(text:1\.2\.3\)" is not a number/);
    // Before any load: even for a model that is not stored.
    const early = await e.call({ type: "generate", model: "https://nowhere.invalid/m.json", settings: { prompt: "(x:1.2.3)" } });
    assert.equal((early.final as { code: string }).code, "invalid", JSON.stringify(early.final));
    const status = await e.call({ type: "status" });
    assert.equal(status.final.type, "status");
    // Deleting removes the files and chunks; the model is then unknown.
    const deleted = await e.call({ type: "deleteModel", id: manifestUrl("clean") });
    assert.equal(deleted.final.type, "deleted", JSON.stringify(deleted.final));
    const listed = await e.call({ type: "listModels" });
    assert.ok(!(listed.final as { models: { id: string }[] }).models.some((m) => m.id === manifestUrl("clean")));
    assert.deepEqual(await storeConsistent(e, manifestUrl("clean")), { files: 0, complete: 0, problems: [], stored: {} });
    const gen = await e.call({ type: "generate", model: manifestUrl("clean"), settings: { prompt: "x" } });
    assert.equal((gen.final as { code: string }).code, "not-stored");
    const again = await e.call({ type: "deleteModel", id: manifestUrl("clean") });
    assert.equal((again.final as { code: string }).code, "not-stored");
    await e.page.close();
  });
});

test("without WebGPU the engine answers no-webgpu instead of hanging", { timeout: 120_000 }, async () => {
  const browser = await chromium.launch({
    executablePath: process.env["CHROMIUM"] ?? "/usr/bin/chromium",
    headless: true,
    args: ARGS.filter((a) => a !== "--enable-unsafe-webgpu"),
  });
  try {
    const page = await browser.newPage();
    const e = await openEngine(h, page);
    const { final } = await e.call({ type: "status" }, 60_000);
    assert.equal((final as { code: string }).code, "no-webgpu", JSON.stringify(final));
  } finally {
    await browser.close();
  }
});
