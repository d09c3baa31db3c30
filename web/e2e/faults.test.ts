// Hardening end to end (issue 20): a real panic and the restarted worker, Web Locks across tabs (a
// panicking download, delete during another tab's download, inspect and cancel while another tab
// downloads), the model server's hostile answers (Range ignored or unreadable, extra bytes, redirects
// off the allow-list, slow or huge manifests, sizes JavaScript cannot count). The soak of 50 injected
// faults is soak.test.ts.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { DownloadReport, Request, WorkerEvent } from "../src/protocol";
import { SMALL, code, onServer } from "./faults";
import { FIXTURES, openEngine, startHarness, type Harness } from "./harness";

let h: Harness;
before(async () => {
  h = await startHarness();
});
after(async () => {
  await h?.close();
});
const { manifestUrl, ensure, stored, assertStoredExactly } = onServer(() => h);

describe("hardening", () => {
  test("a real panic: the request ends with code panic, the page's worker is replaced, the next generation works; the page's client answers by request id, an AbortSignal cancels its request alone", { timeout: 300_000 }, async () => {
    const page = await h.browser.newPage();
    const logs: string[] = [];
    page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
    // tsx (esbuild keepNames) wraps named functions in __name(...): give evaluated code a no-op one.
    await page.addInitScript("globalThis.__name = (f) => f;");
    await page.goto(h.app.url);
    type Client = { call(r: Request): Promise<WorkerEvent>; starts: number };
    // Byte arrays (a result's PNG) come back as their length.
    const call = (r: Request): Promise<WorkerEvent> =>
      page.evaluate(async (r) => {
        const event = await (window as unknown as { websdEngine: Client }).websdEngine.call(r);
        return JSON.parse(JSON.stringify(event, (_k, v: unknown) => (v instanceof Uint8Array ? v.length : v))) as WorkerEvent;
      }, r);
    const starts = () => page.evaluate(() => (window as unknown as { websdEngine: Client }).websdEngine.starts);
    const run = ensure("panic");
    assert.equal(code(await call(run)), "modelReady");
    const startsBefore = await starts();
    // Two requests queued behind the panic go to the fresh worker.
    const [panic, listed, status] = await Promise.all([call({ type: "panic" }), call({ type: "listModels" }), call({ type: "status" })]);
    assert.equal(code(panic), "panic", JSON.stringify(panic));
    assert.match((panic as { message: string }).message, /a panic requested for testing/);
    assert.equal(code(listed), "models", "a request queued behind the panic ran in the new worker");
    assert.equal(code(status), "status");
    assert.equal(await starts(), startsBefore + 1, "one fresh worker");
    const result = await call({ type: "generate", model: run.manifestUrl, variant: "fp16", settings: SMALL });
    assert.equal(code(result), "result", JSON.stringify(result));
    console.log(`panic: ${(panic as { message: string }).message.split("\n")[0]}; then a generation in ${(result as { elapsedMs: number }).elapsedMs.toFixed(0)} ms`);
    assert.ok(logs.some((l) => l.includes("a panic requested for testing")), "the panic's message reached the console");

    // The page's client (engine.ts) answers by request id, gives each call its own events, and an
    // AbortSignal cancels its own request alone: queued (it never runs) or running (at the next step).
    const ids = await page.evaluate(
      async ([model, settings]) => {
        type Event = { type: string; phase?: string; code?: string };
        type Options = { signal?: AbortSignal; onEvent?: (e: Event) => void };
        const engine = (window as unknown as { websdEngine: { call(r: unknown, o?: Options): Promise<Event> } }).websdEngine;
        const seen: Record<string, string[]> = { generate: [], list: [], status: [], running: [], loras: [] };
        const label = (e: Event): string => (e.phase ? `${e.type}:${e.phase}` : e.type);
        const track = (name: string, signal?: AbortSignal): Options => ({
          ...(signal ? { signal } : {}),
          onEvent: (e) => void seen[name]!.push(label(e)),
        });
        // Queued: aborted before it runs, behind a generation; the request after it still runs.
        const queued = new AbortController();
        const calls = Promise.all([
          engine.call({ type: "generate", model, variant: "fp16", settings }, track("generate")),
          engine.call({ type: "listModels" }, track("list", queued.signal)),
          engine.call({ type: "status" }, track("status")),
        ] as const);
        queued.abort();
        const [generated, list, status] = await calls;
        // Running: aborted at its first denoising step; a request queued behind it is not cancelled.
        const running = new AbortController();
        const runningOptions = track("running", running.signal);
        const onEvent = runningOptions.onEvent!;
        runningOptions.onEvent = (e) => {
          onEvent(e);
          if (e.type === "progress" && e.phase === "denoise") running.abort();
        };
        const [stopped, loras] = await Promise.all([
          engine.call({ type: "generate", model, variant: "fp16", settings: { ...settings, steps: 4 } }, runningOptions),
          engine.call({ type: "listLoras" }, track("loras")),
        ]);
        return { answers: [generated, list, status, stopped, loras].map(label), seen };
      },
      [run.manifestUrl, SMALL] as const,
    );
    assert.deepEqual(ids.answers, ["result", "cancelled:download", "status", "cancelled:denoise", "loras"], JSON.stringify(ids));
    assert.deepEqual(ids.seen["list"], ["cancelled:download"], "the aborted queued request's only event is its answer");
    assert.deepEqual(ids.seen["status"], ["status"]);
    assert.deepEqual(ids.seen["loras"], ["loras"]);
    assert.ok(ids.seen["generate"]!.every((e) => e.startsWith("progress:") || e === "memory" || e === "result") && ids.seen["generate"]!.at(-1) === "result", JSON.stringify(ids.seen["generate"]));
    assert.ok(!ids.seen["running"]!.includes("progress:decode"), "the aborted generation stopped before decoding");
    console.log(`request ids: answers ${ids.answers.join(", ")}; the generation's own events: ${ids.seen["generate"]!.length}`);
    await page.close();
  });

  test("Web Locks: a panic inside the download lock releases it; delete stops another tab's download; inspect and cancel do not wait", { timeout: 300_000 }, async () => {
    const context = await h.browser.newContext();
    const [a, b] = [await openEngine(h, await context.newPage()), await openEngine(h, await context.newPage())];

    // Tab A panics holding the model's download lock: its worker ends, and tab B downloads at once.
    const locked = ensure("lock-panic");
    const from = (await a.events()).length;
    await a.send({ type: "panic", holdDownloadLock: locked.manifestUrl });
    assert.equal(code(await a.waitFor((x) => x.type === "error", 30_000, from)), "panic");
    const t0 = Date.now();
    const ready = await b.call(locked, 60_000);
    assert.equal(code(ready.final), "modelReady", JSON.stringify(ready.final));
    console.log(`after a panic in the lock, another tab downloaded in ${Date.now() - t0} ms`);
    await a.startWorker();

    // Tab A downloads with the U-Net stalled mid-way; tab B inspects (no wait for the lock), a
    // cancelled ensure in tab B returns at once, then B deletes: A's download ends, nothing is left.
    const run = ensure("lock-delete", { stallTimeoutMs: 20_000 });
    h.cdn.models.clearFaults();
    h.cdn.models.addFaults([{ path: "tiny-sd/unet/diffusion_pytorch_model.fp16.safetensors", fault: "stall:1000000" }]);
    const aFrom = (await a.events()).length;
    await a.send(run);
    await a.waitFor((x) => x.type === "progress" && x.file === "unet/diffusion_pytorch_model.fp16.safetensors" && x.done > 0 && (x.bytes ?? 0) > 900_000, 60_000, aFrom);
    const t1 = Date.now();
    const info = await b.call({ type: "inspectModel", manifestUrl: run.manifestUrl, variant: "fp16" }, 15_000);
    assert.equal(code(info.final), "modelInfo", JSON.stringify(info.final));
    const inspectMs = Date.now() - t1;
    const bFrom = (await b.events()).length;
    await b.send({ ...run, stallTimeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 500));
    await b.send({ type: "cancel" });
    assert.equal(code(await b.waitFor((x) => x.type === "cancelled" || x.type === "error" || x.type === "modelReady", 5_000, bFrom)), "cancelled");
    const cancelMs = Date.now() - t1 - inspectMs;
    const deleted = await b.call({ type: "deleteModel", id: run.manifestUrl }, 15_000);
    assert.equal(code(deleted.final), "deleted", JSON.stringify(deleted.final));
    const aEnd = await a.waitFor((x) => x.type === "error" || x.type === "modelReady" || x.type === "cancelled", 60_000, aFrom);
    assert.equal(code(aEnd), "not-stored", JSON.stringify(aEnd));
    assert.match((aEnd as { message: string }).message, /deleted/);
    await new Promise((r) => setTimeout(r, 1000));
    const left = await stored(b, run.manifestUrl);
    assert.deepEqual([left.files.length, left.orphanChunks], [0, 0], "nothing of the deleted model is stored");
    console.log(`locks: inspect during another tab's download ${inspectMs} ms; a waiting ensure cancelled in ${cancelMs} ms; the downloading tab ended with: ${(aEnd as { message: string }).message}`);
    await context.close();
  });

  test("hostile servers: Range ignored or unreadable, extra bytes, redirects off the allow-list, slow and huge manifests, 2^53 sizes", { timeout: 300_000 }, async () => {
    const e = await openEngine(h);
    const UNET = "tiny-sd/unet/diffusion_pytorch_model.fp16.safetensors";
    const size = 2888024;
    for (const second of ["ignorerange", "norange", "hiderange", "badrange", "norangelength"]) {
      const run = `range-${second}`;
      h.cdn.models.clearFaults();
      // A reset mid-file, then the resume's Range request gets the fault.
      h.cdn.models.addFaults([{ path: UNET, fault: "reset:1000000" }, { path: UNET, fault: second }]);
      const { final } = await e.call(ensure(run));
      assert.equal(code(final), "modelReady", `${second}: ${JSON.stringify(final)}`);
      assert.equal(h.cdn.models.pendingFaults(), 0, `${second} fired`);
      const report = (final as { report: DownloadReport }).report;
      await assertStoredExactly(e, run, report);
      console.log(`${second} after a reset: retries ${report.retries}, fetched ${report.fetchedBytes} of ${report.totalBytes}`);
    }
    h.cdn.models.addFaults([{ path: UNET, fault: "extra:4096" }]);
    const extra = await e.call(ensure("extra"));
    assert.equal(code(extra.final), "modelReady", JSON.stringify(extra.final));
    await assertStoredExactly(e, "extra", (extra.final as { report: DownloadReport }).report);

    // A redirect to another origin than the allowed ones: refused, nothing stored from it.
    const cdnOrigin = new URL(h.cdn.url).origin;
    h.cdn.models.addFaults([{ path: "tiny-sd/manifest.json", fault: "redirect" }]);
    const redirected = await e.call(ensure("redirect", { allowedOrigins: [cdnOrigin] }));
    // (The harness's policy lets the worker reach both loopback names of the model server: the refusal
    // is the engine's.)
    assert.equal(code(redirected.final), "invalid", JSON.stringify(redirected.final));
    assert.match((redirected.final as { message: string }).message, /redirected: .* is not an allowed model origin/);
    console.log(`redirect off the allow-list: ${code(redirected.final)}: ${(redirected.final as { message: string }).message}`);
    h.cdn.models.addFaults([{ path: UNET, fault: "redirect" }]);
    const redirectedFile = await e.call(ensure("redirect-file", { allowedOrigins: [cdnOrigin] }));
    assert.equal(code(redirectedFile.final), "invalid", JSON.stringify(redirectedFile.final));
    // A manifest body that stalls, and one of 2 MB (valid JSON: padded with spaces).
    h.cdn.models.clearFaults();
    h.cdn.models.addFaults([{ path: "tiny-sd/manifest.json", fault: "stall:10" }]);
    const slow = await e.call(ensure("slow-manifest", { stallTimeoutMs: 2000 }), 30_000);
    assert.equal(code(slow.final), "network", JSON.stringify(slow.final));
    assert.match((slow.final as { message: string }).message, /stalled/);
    h.cdn.models.addFaults([{ path: "tiny-sd/manifest.json", fault: "extra:2000000" }]);
    const huge = await e.call(ensure("huge-manifest"), 30_000);
    assert.equal(code(huge.final), "bad-request", JSON.stringify(huge.final));
    assert.match((huge.final as { message: string }).message, /larger than 1024 KiB/);
    // A size JavaScript cannot count exactly.
    const unsafe = await e.call({ type: "ensureModel", manifestUrl: `${h.cdn.url}hostile/size-2p53.json` });
    assert.equal(code(unsafe.final), "bad-request", JSON.stringify(unsafe.final));
    assert.match((unsafe.final as { message: string }).message, /2\^53/);
    // Nothing of these broke the store's listing.
    const listed = await e.call({ type: "listModels" });
    assert.equal(code(listed.final), "models", JSON.stringify(listed.final));
    assert.equal(h.cdn.models.pendingFaults(), 0);

    // A store written before chunk hashes were kept (records without them): the next ensure reads
    // the files back and verifies them once, fetching nothing, and records the hashes.
    const old = ensure("extra").manifestUrl;
    const stripped = await e.page.evaluate(async (id) => {
      const db = await new Promise<IDBDatabase>((ok, err) => {
        const r = indexedDB.open("websd-weights");
        r.onsuccess = () => ok(r.result);
        r.onerror = () => err(r.error);
      });
      const tx = db.transaction("files", "readwrite");
      const os = tx.objectStore("files");
      const records = await new Promise<{ id: string; path: string; chunkSha256?: string[] }[]>((ok) => {
        const r = os.getAll(IDBKeyRange.bound([id], [id + "\0"], false, true));
        r.onsuccess = () => ok(r.result as { id: string; path: string }[]);
      });
      for (const r of records) {
        delete r.chunkSha256;
        os.put(r, [r.id, r.path]);
      }
      await new Promise<void>((ok) => (tx.oncomplete = () => ok()));
      db.close();
      return records.length;
    }, old);
    const migrated = await e.call(ensure("extra"));
    assert.equal(code(migrated.final), "modelReady", JSON.stringify(migrated.final));
    const migratedReport = (migrated.final as { report: DownloadReport }).report;
    assert.equal(migratedReport.fetchedBytes, 0, "verified from the store, nothing fetched");
    await assertStoredExactly(e, "extra", migratedReport);
    const hashed = await e.page.evaluate(async (id) => {
      const db = await new Promise<IDBDatabase>((ok) => {
        const r = indexedDB.open("websd-weights");
        r.onsuccess = () => ok(r.result);
      });
      const records = await new Promise<{ size: number; chunkBytes: number; chunkSha256?: string[] }[]>((ok) => {
        const r = db.transaction("files").objectStore("files").getAll(IDBKeyRange.bound([id], [id + "\0"], false, true));
        r.onsuccess = () => ok(r.result as { size: number; chunkBytes: number }[]);
      });
      db.close();
      return records.every((r) => r.chunkSha256?.length === Math.ceil(r.size / r.chunkBytes));
    }, old);
    assert.ok(hashed, "every record has its chunk hashes again");
    console.log(`${stripped} file records without chunk hashes: verified from the store, 0 bytes fetched`);

    // "Clear site data" from the page: the worker's connection gives way (the deletion is not blocked)
    // and the next request opens a new database.
    const deletion = await e.page.evaluate(
      () =>
        new Promise<string>((ok) => {
          const r = indexedDB.deleteDatabase("websd-weights");
          let blocked = false;
          r.onblocked = () => (blocked = true);
          r.onsuccess = () => ok(blocked ? "deleted after being blocked" : "deleted");
          r.onerror = () => ok(`failed: ${String(r.error)}`);
          setTimeout(() => ok("still blocked after 10 s"), 10_000);
        }),
    );
    assert.match(deletion, /^deleted/, deletion);
    const empty = await e.call({ type: "listModels" });
    assert.deepEqual((empty.final as { models: unknown[] }).models, [], JSON.stringify(empty.final));
    const again = await e.call(ensure("after-clear"));
    assert.equal(code(again.final), "modelReady", JSON.stringify(again.final));
    console.log(`database deleted from the page while the worker had it open: ${deletion}; the next requests reopened it`);
    void size;
    void FIXTURES;
    await e.page.close();
  });
});
