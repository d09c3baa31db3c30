// What the fault tests share (faults.test.ts, soak.test.ts: two files so that the e2e suite's two
// lanes stay busy to the end): requests for a run's copy of the tiny model on the harness's model
// server, and reads and damage of the page's IndexedDB store.
import assert from "node:assert/strict";
import type { DownloadReport, Request, WorkerEvent } from "../src/protocol";
import type { EnginePage, Harness, Recorded } from "./harness";

export const CHUNK = 256 * 1024;

/** Behaviour checks generate 16x16 px in 1 step (SwiftShader: ~10 s per 64 px U-Net step). */
export const SMALL = { prompt: "a red apple", width: 16, height: 16, steps: 1, guidance: 7.5, seed: 7, scheduler: "ddim" } as const;

export const code = (e: Recorded | WorkerEvent): string => (e.type === "error" ? e.code : e.type);

export type ManifestFile = { path: string; size: number; sha256: string };

/** Requests and checks against the model server of `harness()` (read when called: the harness starts
 * in the test file's `before`). */
export function onServer(harness: () => Harness) {
  const manifestUrl = (run: string, model = "tiny-sd"): string => `${harness().cdn.url}${model}/manifest.json?run=${run}`;

  function ensure(run: string, extra: Partial<Extract<Request, { type: "ensureModel" }>> = {}): Extract<Request, { type: "ensureModel" }> {
    return { type: "ensureModel", manifestUrl: manifestUrl(run), variant: "fp16", chunkBytes: CHUNK, stallTimeoutMs: 5000, ...extra };
  }

  async function manifestFiles(run: string): Promise<ManifestFile[]> {
    return ((await (await fetch(manifestUrl(run))).json()) as { files: ManifestFile[] }).files;
  }

  /** The store's view of model `id`, read in the page: each file's record, its chunks' sizes, and the
   * sha256 of its chunks concatenated. */
  async function stored(e: EnginePage, id: string): Promise<{
    files: { path: string; size: number; stored: number; complete: boolean; repair: number[]; chunkBytes: number; chunks: number[]; sha256: string }[];
    orphanChunks: number;
  }> {
    return e.page.evaluate(async (id) => {
      const db = await new Promise<IDBDatabase>((ok, err) => {
        const r = indexedDB.open("websd-weights");
        r.onsuccess = () => ok(r.result);
        r.onerror = () => err(r.error);
      });
      const all = <T>(store: string, range: IDBKeyRange, keys = false) =>
        new Promise<T[]>((ok, err) => {
          const os = db.transaction(store).objectStore(store);
          const r = keys ? os.getAllKeys(range) : os.getAll(range);
          r.onsuccess = () => ok(r.result as T[]);
          r.onerror = () => err(r.error);
        });
      type F = { path: string; size: number; stored: number; complete: boolean; repair?: number[]; chunkBytes: number };
      const records = await all<F>("files", IDBKeyRange.bound([id], [id + "\0"], false, true));
      const files = [];
      let inFiles = 0;
      for (const f of records) {
        const blobs = await all<Blob>("chunks", IDBKeyRange.bound([id, f.path], [id, f.path + "\0"], false, true));
        inFiles += blobs.length;
        const digest = await crypto.subtle.digest("SHA-256", await new Blob(blobs).arrayBuffer());
        const sha256 = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
        files.push({ path: f.path, size: f.size, stored: f.stored, complete: f.complete, repair: f.repair ?? [], chunkBytes: f.chunkBytes, chunks: blobs.map((b) => b.size), sha256 });
      }
      const chunkKeys = await all<unknown>("chunks", IDBKeyRange.bound([id], [id + "\0"], false, true), true);
      db.close();
      return { files, orphanChunks: chunkKeys.length - inFiles };
    }, id);
  }

  /** Every file of `run` stored whole, byte-identical to the manifest, in exactly its chunks (none lost,
   * none duplicated), none waiting for repair. */
  async function assertStoredExactly(e: EnginePage, run: string, report: DownloadReport): Promise<void> {
    const manifest = await manifestFiles(run);
    const s = await stored(e, manifestUrl(run));
    assert.equal(s.orphanChunks, 0, "no chunk outside a file");
    for (const path of report.files) {
      const f = s.files.find((x) => x.path === path);
      const want = manifest.find((m) => m.path === path)!;
      assert.ok(f, `${path} stored`);
      assert.equal(f.sha256, want.sha256, `${path} byte-identical`);
      assert.ok(f.complete && f.repair.length === 0 && f.stored === f.size, `${path} complete`);
      const chunks = Math.ceil(f.size / f.chunkBytes);
      assert.equal(f.chunks.length, chunks, `${path}: ${f.chunks.length} chunks, ${chunks} expected`);
      assert.ok(f.chunks.every((n, i) => n === Math.min(f.chunkBytes, f.size - i * f.chunkBytes)), `${path}: chunk sizes`);
    }
  }

  return { manifestUrl, ensure, manifestFiles, stored, assertStoredExactly };
}

/** Damages chunk `index` of a stored file in the page's IndexedDB, as a disk or another program might. */
export async function damageChunk(e: EnginePage, id: string, path: string, index: number, how: "flip" | "truncate" | "delete"): Promise<void> {
  await e.page.evaluate(
    async ([id, path, index, how]) => {
      const db = await new Promise<IDBDatabase>((ok, err) => {
        const r = indexedDB.open("websd-weights");
        r.onsuccess = () => ok(r.result);
        r.onerror = () => err(r.error);
      });
      const key = [id, path, index];
      const blob = await new Promise<Blob>((ok, err) => {
        const r = db.transaction("chunks").objectStore("chunks").get(key);
        r.onsuccess = () => ok(r.result as Blob);
        r.onerror = () => err(r.error);
      });
      if (!blob) throw new Error(`no chunk ${JSON.stringify(key)}`);
      const bytes = new Uint8Array(await blob.arrayBuffer());
      const tx = db.transaction("chunks", "readwrite");
      if (how === "delete") tx.objectStore("chunks").delete(key);
      else if (how === "truncate") tx.objectStore("chunks").put(new Blob([bytes.subarray(0, bytes.length >> 1)]), key);
      else {
        const at = bytes.length >> 1;
        bytes[at] = bytes[at]! ^ 0x01;
        tx.objectStore("chunks").put(new Blob([bytes]), key);
      }
      await new Promise<void>((ok, err) => {
        tx.oncomplete = () => ok();
        tx.onerror = () => err(tx.error);
      });
      db.close();
    },
    [id, path, index, how] as const,
  );
}

/** RGBA of the last result's PNG. */
export async function lastImage(e: EnginePage): Promise<number[]> {
  const results = (await e.events()).filter((x) => x.type === "result");
  return (await e.decodePng(results.length - 1)).rgba;
}
