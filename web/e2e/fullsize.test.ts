// Measurement, not part of CI: the full-size SD1.5-shaped fp16 model (2.1 GB, regenerate it with
// ../shared/oracle/step4_fullsize.py) downloaded into IndexedDB and loaded onto WebGPU in headless
// Chromium. Reports the download time, the load time against a plain IndexedDB read of the same
// chunks, and the wasm heap's peak size.
//
//   SD15_DIR=/tmp/sd-oracle/sd15-random npm --prefix web exec -- tsx --test e2e/fullsize.test.ts
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import type { DownloadReport } from "../src/protocol";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { chromium } from "playwright-core";
import { startModelServer } from "../scripts/model-server";
import { ARGS, openEngine, startHarness } from "./harness";

const DIR = process.env["SD15_DIR"];

test("full-size SD1.5-shaped model: download, load tensor by tensor, wasm heap peak", { skip: !DIR, timeout: 7_200_000 }, async () => {
  const h = await startHarness();
  const cdn = await startModelServer({ root: path.dirname(path.resolve(DIR!)) });
  // A profile on disk: an ephemeral (incognito-like) context keeps IndexedDB in memory and refuses
  // writes after ~1.4 GB with QuotaExceededError.
  const profile = mkdtempSync(path.join(tmpdir(), "websd-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env["CHROMIUM"] ?? "/usr/bin/chromium",
    headless: true,
    args: ARGS,
  });
  try {
    const e = await openEngine(h, context.pages()[0] ?? (await context.newPage()));
    const id = `${cdn.url}${path.basename(path.resolve(DIR!))}/manifest.json`;
    let t = Date.now();
    const ready = await e.call({ type: "ensureModel", manifestUrl: id, variant: "fp16" }, 3_600_000);
    assert.equal(ready.final.type, "modelReady", JSON.stringify(ready.final));
    const report = (ready.final as { report: DownloadReport }).report;
    const downloadMs = Date.now() - t;
    const weights = report.files.filter((f) => f.endsWith(".safetensors"));

    // A plain read of the same chunks, in the page (no decoding, no upload).
    const readMs = await e.page.evaluate(
      async ([id, files]) => {
        const db = await new Promise<IDBDatabase>((ok, err) => {
          const r = indexedDB.open("websd-weights");
          r.onsuccess = () => ok(r.result);
          r.onerror = () => err(r.error);
        });
        const t0 = performance.now();
        let bytes = 0;
        for (const f of files) {
          for (let i = 0; ; i++) {
            const chunk = await new Promise<Uint8Array | undefined>((ok, err) => {
              const r = db.transaction("chunks").objectStore("chunks").get([id, f, i]);
              r.onsuccess = () => ok(r.result as Uint8Array | undefined);
              r.onerror = () => err(r.error);
            });
            if (!chunk) break;
            bytes += chunk.byteLength;
          }
        }
        db.close();
        return [performance.now() - t0, bytes] as const;
      },
      [id, weights] as const,
    );

    t = Date.now();
    const loaded = await e.call({ type: "load", model: id, variant: "fp16" }, 3_600_000);
    assert.equal(loaded.final.type, "modelLoaded", `${JSON.stringify(loaded.final)}\n${e.logs.slice(-20).join("\n")}`);
    const { loadMs, wasmMemoryBytes } = loaded.final as { loadMs: number; wasmMemoryBytes: number };
    const mib = (n: number) => (n / 2 ** 20).toFixed(0);
    console.log(
      `full-size fp16: ${weights.length} weight files, ${mib(report.totalBytes)} MiB in all; download ${(downloadMs / 1000).toFixed(1)} s; ` +
        `plain IndexedDB read of the weights ${(readMs[0] / 1000).toFixed(1)} s (${mib(readMs[1])} MiB); ` +
        `load ${(loadMs / 1000).toFixed(1)} s (${(loadMs / readMs[0]).toFixed(2)}x the plain read); ` +
        `wasm heap peak ${mib(wasmMemoryBytes)} MiB`,
    );
    for (const line of e.logs.filter((l) => l.includes("websd:"))) console.log(line);
    assert.ok(wasmMemoryBytes <= 512 * 2 ** 20, `wasm heap peak ${mib(wasmMemoryBytes)} MiB > 512 MiB`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    cdn.server.closeAllConnections();
    cdn.server.close();
    await h.close();
  }
});
