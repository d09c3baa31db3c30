// The benchmark (not part of CI), in sections that can be run apart (--only unet,image,memory,native,gpu;
// a section not run keeps its last figures in results.json):
// - unet: one headless Chromium session, one page, our worker engine and onnxruntime-web 1.30 (WebGPU
//   and WASM execution providers) alternating on the same U-Net with the same inputs; the outputs are
//   compared so the work is known to be equal;
// - image: time to first image, cold and warm, by phase (image.ts);
// - memory: the full-size SD1.5-shaped model's load and 512 px buffers (image.ts; needs --sd15 DIR);
// - native: that model's U-Net on the Flex CPU device against diffusers' torch on CPU (native.py; needs
//   --sd15 DIR, the oracle venv's python in ORACLE_PY and the unet_io_check example built);
// - gpu: only imports what scripts/bench-gpu.sh measured on a GPU machine (--gpu DIR); not in the
//   default set.
// Writes BENCHMARKS.md and web/bench/results.json; the sections measured by hand (native, kernels, SDXL)
// come from web/bench/memory-plan.md and web/bench/by-hand.md.
//   scripts/bench.sh [--reps N] [--only SECTIONS] [--sd15 DIR] [--gpu DIR]
import { execFileSync, execSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, promises as fs, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { ARGS, CHROMIUM, DIST, FIXTURES, startHarness } from "../e2e/harness";
import { listen, startModelServer } from "../scripts/model-server";
import { memory, wholeImage, type ImageSection, type MemorySection } from "./image";
import { formatUsage } from "./procstat";
import type { Inputs } from "./page";

const here = fileURLToPath(new URL(".", import.meta.url));
const repo = path.resolve(here, "../..");
const { values: args } = parseArgs({
  options: {
    reps: { type: "string", default: "5" },
    only: { type: "string", default: "unet,image,memory,native" },
    // What scripts/bench-gpu.sh wrote on a GPU machine: imported by --only gpu.
    gpu: { type: "string", default: "" },
    sd15: { type: "string", default: process.env["SD15_DIR"] ?? "" },
    "quiet-s": { type: "string", default: "120" },
  },
});
const REPS = Number(args.reps);
const ONLY = new Set(args.only.split(","));

/** A .npy file (little-endian f4 or i8, C order). */
function npy(file: string): { shape: number[]; values: number[] } {
  const buf = readFileSync(file);
  const headerLen = buf.readUInt16LE(8);
  const header = buf.toString("latin1", 10, 10 + headerLen);
  const shape = /'shape': \(([^)]*)\)/.exec(header)![1]!.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const body = buf.subarray(10 + headerLen);
  if (header.includes("'<f4'")) return { shape, values: Array.from(new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength))) };
  if (header.includes("'<i8'")) return { shape, values: Array.from(new BigInt64Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength)), Number) };
  throw new Error(`${file}: unsupported dtype in ${header}`);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const maxAbs = (a: number[], b: number[]): number => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

interface Section {
  model: string;
  rows: {
    name: string;
    error: string | null;
    firstMs: number;
    medianMs: number | null;
    ms: number[];
    maxAbsVsTorch: number | null;
    maxAbsVsWebsd: number | null;
    ratioWebsdToThis: number | null;
  }[];
}

/** The U-Net section: both engines alternating on each model, outputs compared. */
async function unetBench(): Promise<{ adapter: string; browser: string; sections: Section[] }> {
  await build({
    entryPoints: [path.join(here, "page.ts")],
    outfile: path.join(here, "build/bench.js"),
    bundle: true,
    format: "esm",
    target: "es2022",
    logLevel: "warning",
  });

  const MIME: Record<string, string> = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm" };
  const mounts: [string, string][] = [
    ["/app/", DIST],
    ["/ort/", path.join(here, "node_modules/onnxruntime-web/dist")],
    ["/onnx/", path.join(FIXTURES, "onnx")],
    ["/built/", path.join(here, "build")],
    ["/", path.join(here, "build")],
  ];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x").pathname;
    const [prefix, root] = mounts.find(([p]) => url.startsWith(p))!;
    let rel = url.slice(prefix.length) || "index.html";
    if (prefix === "/" && rel === "index.html") rel = "../index.html";
    const file = path.resolve(root, rel);
    fs.readFile(file).then(
      (body) => res.writeHead(200, { "content-type": MIME[path.extname(file)] ?? "application/octet-stream" }).end(body),
      () => res.writeHead(404).end(),
    );
  });
  const url = await listen(server, {});
  const cdn = await startModelServer({ root: FIXTURES });
  const builtCdn = await startModelServer({ root: path.join(here, "build") });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  const page = await browser.newPage();
  const logs: string[] = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  await page.goto(url);
  await page.waitForFunction(() => "bench" in window);

  type Bench = {
    status(): Promise<{ type: string; gpu?: { adapter: string; backend: string; shaderF16: boolean } }>;
    ensure(u: string): Promise<{ type: string }>;
    ours(model: string, x: Inputs, reps: number): Promise<{ ms: number[]; output: number[] } | { error: string }>;
    ort(onnx: string, ep: string, x: Inputs, reps: number): Promise<{ ms: number[]; output: number[] } | { error: string }>;
  };
  const status = await page.evaluate(() => (window as unknown as { bench: Bench }).bench.status());
  const dir = path.join(FIXTURES, "onnx");
  const ts = npy(path.join(dir, "io_timestep.npy")).values;
  const inputs: Inputs = { sample: npy(path.join(dir, "io_sample.npy")), timestep: ts[0]!, ehs: npy(path.join(dir, "io_encoder_hidden_states.npy")) };
  const built = path.join(here, "build/sd-shaped");
  const models = [
    {
      title: "tiny-sd U-Net (the fixtures' tiny model: 2 levels, 32/64 channels)",
      manifest: `${cdn.url}tiny-sd/manifest.json`,
      onnx: `${url}onnx/tiny_unet_legacy_opset17.onnx`,
      torchOut: path.join(dir, "io_torch_out.npy"),
    },
    ...(existsSync(path.join(built, "unet.onnx"))
      ? [
          {
            title: "SD 1.5-shaped U-Net at 1/10 width (4 levels, 32/64/128/128 channels, cross-attention in 3 levels + mid; web/bench/make_sd_shaped.py)",
            manifest: `${builtCdn.url}sd-shaped/manifest.json`,
            onnx: `${url}built/sd-shaped/unet.onnx`,
            torchOut: path.join(built, "io_torch_out.npy"),
          },
        ]
      : []),
  ];

  type Row = { name: string; ms: number[]; first: number; output: number[] | null; error?: string };
  const sections: Section[] = [];
  for (const m of models) {
    const ensured = await page.evaluate((u) => (window as unknown as { bench: Bench }).bench.ensure(u), m.manifest);
    if (ensured.type !== "modelReady") throw new Error(`ensureModel: ${JSON.stringify(ensured)}`);
    const torchOut = npy(m.torchOut).values;
    const rows: Row[] = [
      { name: "websd (WebGPU, worker)", ms: [], first: NaN, output: null },
      { name: "onnxruntime-web WebGPU EP", ms: [], first: NaN, output: null },
      { name: "onnxruntime-web WASM EP", ms: [], first: NaN, output: null },
    ];
    const runOne = async (row: Row, i: number): Promise<void> => {
      if (row.error) return;
      const r = await page.evaluate(
        ([i, model, onnx, x]) => {
          const b = (window as unknown as { bench: Bench }).bench;
          return i === 0 ? b.ours(model, x, 1) : b.ort(onnx, i === 1 ? "webgpu" : "wasm", x, 1);
        },
        [i, m.manifest, m.onnx, inputs] as const,
      );
      if ("error" in r) {
        row.error = r.error;
        return;
      }
      if (Number.isNaN(row.first)) row.first = r.ms[0]!;
      else row.ms.push(r.ms[0]!);
      row.output = r.output;
    };
    // A warm-up call each (shader compilation, session creation), reported apart; then alternate call by call.
    for (let rep = 0; rep <= REPS; rep++) {
      for (let i = 0; i < rows.length; i++) await runOne(rows[i]!, i);
      console.error(`${m.manifest} round ${rep}: ${rows.map((r) => (r.error ? "error" : `${(r.ms.at(-1) ?? r.first).toFixed(0)} ms`)).join(", ")}`);
    }
    const ours = rows[0]!;
    sections.push({
      model: m.title,
      rows: rows.map((r) => ({
        name: r.name,
        error: r.error ?? null,
        firstMs: r.first,
        medianMs: r.ms.length ? median(r.ms) : null,
        ms: r.ms,
        maxAbsVsTorch: r.output ? maxAbs(r.output, torchOut) : null,
        maxAbsVsWebsd: r.output && ours.output ? maxAbs(r.output, ours.output) : null,
        ratioWebsdToThis: r.ms.length && ours.ms.length ? median(ours.ms) / median(r.ms) : null,
      })),
    });
  }
  await browser.close();
  server.close();
  for (const c of [cdn, builtCdn]) {
    c.server.closeAllConnections();
    c.server.close();
  }
  if (logs.some((l) => l.startsWith("error"))) console.error(logs.filter((l) => l.startsWith("error")).slice(0, 10).join("\n"));
  return { adapter: status.gpu ? `${status.gpu.adapter} (${status.gpu.backend}, shader-f16 ${status.gpu.shaderF16 ? "yes" : "no"})` : "none", browser: browser.version(), sections };
}

type Results = {
  date: string;
  machine: string;
  browser: string;
  adapter: string;
  versions: Record<string, string>;
  unet?: undefined | { date: string; websd: string; inputs: string; reps: number; sections: Section[] };
  image?: undefined | ({ date: string; websd: string } & ImageSection);
  memory?: undefined | ({ date: string; websd: string } & MemorySection);
  native?: undefined | { date: string; websd: string; torch: string; threads: number; sections: NativeSection[] };
  gpu?: undefined | GpuSection;
};
interface GpuSection {
  date: string;
  websd: string;
  gpu: string;
  cpu: string;
  /** native.py on CUDA torch against websd on wgpu, by precision. */
  unet: Record<"f32" | "f16", { torch: string; ours: string; sections: NativeSection[] }>;
  /** op_bench's lines at 64x64 latents, in its order: op name and median ms, by precision. */
  ops: Record<"f32" | "f16", { adapter: string; ms: [string, number][] }>;
  /** op_bench's `tilings` summaries: our convolution's best tiling against burn's, by precision. */
  tilings?: Record<"f32" | "f16", Tiling[]>;
  /** The workgroup target the U-Net's convolutions were tiled for (WEBSD_CONV_WORKGROUPS). */
  convWorkgroups?: string;
  peakGflops?: number;
}
interface Tiling {
  shape: string;
  burnMs: number;
  best: string;
  bestMs: number;
  gflops: number;
}
interface NativeSection {
  latents: string;
  torch: { firstMs: number; medianMs: number; ms: number[] };
  websd: { firstMs: number; medianMs: number; ms: number[] };
  maxAbsVsTorch: number;
  /** native.py --variants: each WEBSD_KERNELS value's own timing. */
  variants?: Record<string, { firstMs: number; medianMs: number; ms: number[]; maxAbsVsTorch: number }>;
}
const resultsFile = path.join(here, "results.json");
const previous: Partial<Results> = existsSync(resultsFile) ? (JSON.parse(readFileSync(resultsFile, "utf8")) as Partial<Results>) : {};
// The commit measured; "+changes" when the working tree (outside the benchmark's own outputs) differs from it.
const dirty = execSync("git status --porcelain -- . ':!BENCHMARKS.md' ':!web/bench/results.json'", { cwd: repo }).toString().trim() !== "";
const websd = execSync("git rev-parse --short HEAD", { cwd: repo }).toString().trim() + (dirty ? "+changes" : "");
const date = new Date().toISOString();
const results: Results = {
  date,
  machine: `${os.cpus()[0]?.model ?? "?"} x${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}`,
  browser: previous.browser ?? "",
  adapter: previous.adapter ?? "",
  versions: {
    websd,
    burn: "0.22.1",
    "onnxruntime-web": JSON.parse(readFileSync(path.join(here, "node_modules/onnxruntime-web/package.json"), "utf8")).version as string,
  },
  unet: previous.unet,
  image: previous.image,
  memory: previous.memory,
  native: previous.native,
  gpu: previous.gpu,
};
if (ONLY.has("unet")) {
  const u = await unetBench();
  results.browser = `Chromium ${u.browser} (headless, --enable-unsafe-webgpu)`;
  results.adapter = u.adapter;
  results.unet = {
    date,
    websd,
    inputs: "fp32 weights, batch 2 (CFG's pair), 32x32 latents, 77 tokens x 32; the tiny DDIM run's first-step U-Net inputs (tests/fixtures/onnx)",
    reps: REPS,
    sections: u.sections,
  };
}
if (ONLY.has("image")) {
  const h = await startHarness();
  try {
    results.image = { date, websd, ...(await wholeImage(h, Math.max(1, Math.min(REPS, 2)))) };
  } finally {
    await h.close();
  }
}
if (ONLY.has("memory")) {
  if (!args.sd15) console.error("memory: skipped (no --sd15 DIR / SD15_DIR: the full-size model of ../shared/oracle/step4_fullsize.py)");
  else results.memory = { date, websd, ...(await memory(args.sd15, Number(args["quiet-s"]) * 1000, REPS)) };
}
if (ONLY.has("native")) {
  const py = process.env["ORACLE_PY"] ?? "/tmp/sd-oracle/venv/bin/python";
  const target = process.env["CARGO_TARGET_DIR"] ?? path.join(repo, "target");
  const binary = path.join(target, "release/examples/unet_io_check");
  if (!args.sd15 || !existsSync(py) || !existsSync(binary)) {
    console.error(`native: skipped (needs --sd15 DIR, ORACLE_PY (${py}) and ${binary})`);
  } else {
    const work = mkdtempSync(path.join(os.tmpdir(), "websd-native-"));
    try {
      const out = execFileSync(py, [path.join(here, "native.py"), args.sd15, binary, String(REPS), work], {
        stdio: ["ignore", "pipe", "inherit"],
        maxBuffer: 1 << 24,
      });
      results.native = { date, websd, ...(JSON.parse(out.toString()) as { torch: string; threads: number; sections: NativeSection[] }) };
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
}
if (ONLY.has("gpu")) {
  if (!args.gpu) console.error("gpu: skipped (needs --gpu DIR, written by scripts/bench-gpu.sh on a GPU machine)");
  else {
    // A step the lease's time cut off leaves its file missing or empty.
    const read = (f: string): string => (existsSync(path.join(args.gpu, f)) ? readFileSync(path.join(args.gpu, f), "utf8") : "");
    const meta = JSON.parse(read("meta.json")) as { date: string; websd: string; gpu: string; cpu: string };
    const ops = (f: string): { adapter: string; ms: [string, number][] } => {
      const lines = read(f).trim().split("\n");
      const ms = lines.flatMap((l): [string, number][] => {
        // "name: 1.23 ms, 0.5 GFLOP, ..." (the roofline's figures follow the time).
        const m = /^(.*?): ([\d.]+) ms(,|$)/.exec(l);
        return m ? [[m[1]!, Number(m[2])]] : [];
      });
      return { adapter: lines.find((l) => l.startsWith("adapter: "))?.replace(/^adapter: /, "") ?? "?", ms };
    };
    const tilings = (f: string): Tiling[] =>
      read(f)
        .split("\n")
        .flatMap((l) => {
          const m = /^(.*?): burn's ([\d.]+) ms, best websd's (\S+) ([\d.]+) ms \([\d.]+x burn's, ([\d.]+) GFLOP\/s\)/.exec(l);
          return m ? [{ shape: m[1]!, burnMs: Number(m[2]), best: m[3]!, bestMs: Number(m[4]), gflops: Number(m[5]) }] : [];
        });
    const unet = (f: string): { torch: string; ours: string; sections: NativeSection[] } =>
      read(f) ? JSON.parse(read(f)) : { torch: "?", ours: "?", sections: [] };
    results.gpu = {
      ...meta,
      unet: { f32: unet("unet-f32.json"), f16: unet("unet-f16.json") },
      ops: { f32: ops("ops-f32.txt"), f16: ops("ops-f16.txt") },
      tilings: { f32: tilings("tilings-f32.txt"), f16: tilings("tilings-f16.txt") },
      convWorkgroups: /WEBSD_CONV_WORKGROUPS=(\d+)/.exec(read("log.txt"))?.[1] ?? "",
      peakGflops: Number(process.env["PEAK_GFLOPS"] ?? 67000),
    };
  }
}
writeFileSync(resultsFile, JSON.stringify(results, null, 2) + "\n");

const fmt = (v: number | null, d = 1): string => (v === null || Number.isNaN(v) ? "–" : v.toFixed(d));
const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;
const s = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
const table = (rows: Section["rows"]): string =>
  rows
    .map((r) =>
      r.error
        ? `| ${r.name} | failed: ${r.error.slice(0, 120).replace(/\|/g, "/")} | | | | |`
        : `| ${r.name} | ${fmt(r.medianMs)} | ${fmt(r.firstMs)} | ${r.maxAbsVsTorch?.toExponential(2) ?? "–"} | ${r.maxAbsVsWebsd?.toExponential(2) ?? "–"} | ${fmt(r.ratioWebsdToThis, 2)} |`,
    )
    .join("\n");
const u = results.unet;
const unetMd = u
  ? `## Browser, one U-Net call (${u.date}, websd ${u.websd})

${u.inputs}. One page; the three engines alternate call by call (${u.reps} timed calls each after one
warm-up call, which includes shader compilation or session creation). Each call includes reading its output
back to the CPU. "vs torch": max abs difference from diffusers' torch output for the same inputs;
"websd / this" below 1 means websd is faster.
${u.sections
  .map(
    (sec) => `
### ${sec.model}

| engine | median ms / call | first call ms | max abs vs torch | max abs vs websd | websd / this |
|---|---|---|---|---|---|
${table(sec.rows)}
`,
  )
  .join("")}`
  : "## Browser, one U-Net call\n\nNot run yet.\n";
const im = results.image;
const imageMd = im
  ? `## Browser, whole image (${im.date}, websd ${im.websd})

${im.model}; \`runs/txt2img_ddim\`'s settings (${im.settings.width}x${im.settings.height}, ${im.settings.steps} DDIM steps,
guidance ${im.settings.guidance}, seed ${im.settings.seed}). Cold: a new browser profile, the files downloaded from the
local model server into IndexedDB. Warm: a new worker in the same profile, the files read back from IndexedDB.
Each phase is a separate request (ensureModel, load, generate); "total" is from the first request to the
image's arrival in the page. Every image is compared with diffusers'.

| run | download | load | text encode | denoise (first step) | decode | total | max abs vs diffusers |
|---|---|---|---|---|---|---|---|
${im.runs.map((r) => `| ${r.kind} | ${s(r.downloadMs)} | ${s(r.loadMs)} | ${s(r.encodeMs)} | ${s(r.denoiseMs)} (${s(r.firstStepMs)}) | ${s(r.decodeMs)} | ${s(r.totalMs)} | ${r.maxAbsVsDiffusers.toExponential(2)} |`).join("\n")}
`
  : "## Browser, whole image\n\nNot run yet.\n";
const m = results.memory;
const memoryMd = m
  ? `## Browser, memory (${m.date}, websd ${m.websd})

${m.model}, ${mib(m.totalBytes)} of files; GPU buffers counted at \`GPUDevice.createBuffer\` in the worker.

| figure | value | target |
|---|---|---|
| download from the local server into IndexedDB | ${s(m.downloadMs)} | |
| plain IndexedDB read of the weight chunks, 4 in flight as the loader (median) | ${s(m.idbReadMs)} | |
| load (read, decode, upload; median) | ${s(m.loadMs)} = **${(m.loadRatio ?? m.loadMs / m.idbReadMs).toFixed(2)}x** the plain read${m.loadSamples ? ` (median of ${m.loadSamples.length} reps' ratios; reps, read / load: ${m.loadSamples.map((x) => `${s(x.idbReadMs)} / ${s(x.loadMs)}`).join(", ")})` : ""} | <= 1.2x |
| wasm heap peak after the load | **${mib(m.wasmMemoryAfterLoad)}** | <= 512 MiB |
| GPU buffers after the load | ${m.gpuAfterLoad.buffers}, ${mib(m.gpuAfterLoad.bytes)} in all, largest **${mib(m.gpuAfterLoad.largest)}** | <= 128 MiB |
| 512 px, 1 step, guidance 7.5: largest GPU buffer | **${mib(m.at512.largest)}** (${m.at512.buffers} buffers, ${mib(m.at512.bytes)} created in all) | <= 128 MiB |
| 512 px: wasm heap | ${mib(m.at512.wasmMemory)} | <= 512 MiB |

${m.loadSamples?.some((x) => x.loadUsage) ? `What each Chromium process spent, per rep (CPU seconds, and GiB of pages touched for the first time, which the kernel zero-fills; the GPU process holds SwiftShader's "GPU" memory):

| rep | plain read | load |
|---|---|---|
${m.loadSamples.map((x, i) => `| ${i} | ${s(x.idbReadMs)}: ${formatUsage(x.readUsage ?? {})} | ${s(x.loadMs)}: ${formatUsage(x.loadUsage ?? {})} |`).join("\n")}

` : ""}The 512 px run was watched for ${s(m.at512.watchedMs)} (${m.at512.finished ? "it finished" : "until no new buffer came for the quiet period; it had not finished, and was ended"}); events seen: ${m.at512.seenPhases.join(", ")}.

The engine's account of the load:

${m.loadBreakdown.map((l) => `- ${l.replace(/^info: /, "")}`).join("\n")}
`
  : "## Browser, memory\n\nNot run yet (needs --sd15 DIR).\n";
const n = results.native;
const nativeMd = n
  ? `## Native, one full-size U-Net call (${n.date}, websd ${n.websd})

The SD1.5-shaped model's U-Net (860M parameters, fp16 files as f32), batch 2, 77x768 text states,
random inputs; diffusers' torch ${n.torch} on CPU (${n.threads} threads) against websd on the Flex CPU device,
alternating call by call in one session (web/bench/native.py drives both; the first call of each is a
warm-up, reported apart).

| latents | torch median ms | websd median ms | websd / torch (target <= 1.5) | first calls (torch, websd) | max abs vs torch |
|---|---|---|---|---|---|
${n.sections.map((x) => `| ${x.latents} | ${x.torch.medianMs.toFixed(0)} | ${x.websd.medianMs.toFixed(0)} | **${(x.websd.medianMs / x.torch.medianMs).toFixed(2)}** | ${x.torch.firstMs.toFixed(0)}, ${x.websd.firstMs.toFixed(0)} | ${x.maxAbsVsTorch.toExponential(2)} |`).join("\n")}
`
  : "## Native, one full-size U-Net call\n\nNot run yet (needs --sd15 DIR and the oracle venv).\n";
const g = results.gpu;
const gpuMd = g
  ? `## Native on a real GPU (${g.date}, websd ${g.websd})

${g.gpu} (${g.cpu}); websd natively on wgpu (${g.ops.f32.adapter}, autotune on) against
diffusers' torch ${g.unet.f32.torch} on CUDA, the SD1.5-shaped U-Net (same random weights as above,
made on the machine), batch 2, alternating call by call; f32 with TF32 off on both sides, and f16 (weights
and compute). Measured by \`scripts/bench-gpu.sh\` (web/bench/native.py, op_bench), imported with
\`--only gpu --gpu DIR\`. The browser could not be measured there (no Chromium on that machine).

| precision | latents | torch CUDA median ms | websd wgpu median ms | websd / torch | websd's first call (autotune) | max abs vs torch |
|---|---|---|---|---|---|---|
${(["f32", "f16"] as const)
  .flatMap((p) =>
    g.unet[p].sections.flatMap((x) =>
      Object.entries(x.variants ?? { "": { ...x.websd, maxAbsVsTorch: x.maxAbsVsTorch } }).map(
        ([v, w]) =>
          `| ${p}${v ? ` (${v === "burn" ? "burn's kernels" : `our ${v}`})` : ""} | ${x.latents} | ${x.torch.medianMs.toFixed(1)} | ${w.medianMs.toFixed(1)} | **${(w.medianMs / x.torch.medianMs).toFixed(1)}** | ${(w.firstMs / 1000).toFixed(1)} s | ${w.maxAbsVsTorch.toExponential(2)} |`,
      ),
    ),
  )
  .join("\n")}
${
  g.tilings && (g.tilings.f32.length || g.tilings.f16.length)
    ? `
Our convolution in every tiling against burn's autotuned conv2d (\`op_bench 64 wgpu tilings\`${g.convWorkgroups ? `; the U-Net rows
"conv" and "ours" above tiled for ${g.convWorkgroups} workgroups` : ""}): the best tiling per shape, and its share of the f32 peak
(${g.peakGflops} GFLOP/s):

| precision | conv (batch 2) | burn's ms | best tiling | ms | ours / burn's | GFLOP/s | % of f32 peak |
|---|---|---|---|---|---|---|---|
${(["f32", "f16"] as const)
  .flatMap((p) =>
    g.tilings![p].map(
      (t) =>
        `| ${p} | ${t.shape} | ${t.burnMs.toFixed(2)} | ${t.best} | ${t.bestMs.toFixed(2)} | ${(t.bestMs / t.burnMs).toFixed(2)} | ${t.gflops.toFixed(0)} | ${((100 * t.gflops) / (g.peakGflops ?? 67000)).toFixed(1)} |`,
    ),
  )
  .join("\n")}
`
    : ""
}
The U-Net's ops at 512 px shapes (batch 2, 64x64 latents; \`op_bench 64 wgpu\` / \`wgpu-f16\`), median ms of 5
after an autotuned warm-up, each ending with a full readback (so about 0.5 ms is the floor):

| op | f32 | f16 |
|---|---|---|
${g.ops.f32.ms.map(([k, v], i) => `| ${k} | ${fmt(v, 2)} | ${fmt(g.ops.f16.ms[i]?.[0] === k ? g.ops.f16.ms[i]![1] : null, 2)} |`).join("\n")}
`
  : "## Native on a real GPU\n\nNot run yet (scripts/bench-gpu.sh on a GPU machine, then --only gpu --gpu DIR).\n";
const md = `# Benchmarks

Written by \`scripts/bench.sh\` (web/bench/run.ts); raw figures in \`web/bench/results.json\`. Not part of CI.
The sections measured by hand (from "Memory plan" on) are copied from \`web/bench/memory-plan.md\` and
\`web/bench/by-hand.md\`: edit those, or the next run drops the edit.
Each section says when and at which commit it was last run.

| | |
|---|---|
| date | ${results.date} |
| machine | ${results.machine} |
| browser | ${results.browser} |
| WebGPU adapter | ${results.adapter} |
| versions | websd ${results.versions["websd"]}, burn ${results.versions["burn"]}, onnxruntime-web ${results.versions["onnxruntime-web"]} |

${unetMd}
${imageMd}
${memoryMd}
${nativeMd}
${gpuMd}
${readFileSync(path.join(repo, "web/bench/memory-plan.md"), "utf8")}
${readFileSync(path.join(repo, "web/bench/by-hand.md"), "utf8")}`;
writeFileSync(path.join(repo, "BENCHMARKS.md"), md);
console.log(md);
