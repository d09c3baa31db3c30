// The memory section's full-size model without the 6 GB oracle venv: an SD 1.5-shaped diffusers folder
// (fp16 weights, real-repo key naming) built from the tensor list that ../shared/oracle/step4_fullsize.py
// saved (sd15-keys.txt: names, shapes and dtypes of its three weights files), with random values in
// +-[1/128, 1/64). Loading, memory and GPU buffers depend on the shapes only; for outputs to compare
// with torch, use the oracle's own folder.
//
//   npx tsx bench/make_sd15_random.ts OUT_DIR
import { closeSync, copyFileSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) throw new Error("usage: make_sd15_random.ts OUT_DIR");
const tiny = path.join(here, "../../tests/fixtures/tiny-sd");

interface Tensor {
  name: string;
  shape: number[];
  dtype: "F16" | "I64";
}

/** sd15-keys.txt: "== FILE keys=N dtypes={...}" headers, then "   NAME [d0, d1, ...]" lines. */
function readKeys(): Map<string, Tensor[]> {
  const files = new Map<string, Tensor[]>();
  let current: Tensor[] | undefined;
  for (const line of readFileSync(path.join(here, "sd15-keys.txt"), "utf8").split("\n")) {
    const header = /^== (\S+) keys=(\d+)/.exec(line);
    if (header) files.set(header[1]!, (current = []));
    const entry = /^\s+(\S+) \[([\d, ]*)\]$/.exec(line);
    if (entry && current) {
      const name = entry[1]!;
      const shape = entry[2]!.split(",").filter((s) => s.trim()).map(Number);
      // The one integer tensor: CLIP's stored position_ids (0..76).
      current.push({ name, shape, dtype: name.endsWith("position_ids") ? "I64" : "F16" });
    }
  }
  return files;
}

function writeSafetensors(file: string, tensors: Tensor[]): number {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const t of tensors) {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * (t.dtype === "F16" ? 2 : 8);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const fd = openSync(file, "w");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  writeSync(fd, prefix);
  writeSync(fd, Buffer.from(json));
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.dtype === "I64") {
      const ids = new BigInt64Array(n).map((_, i) => BigInt(i % (t.shape.at(-1) ?? 1)));
      writeSync(fd, new Uint8Array(ids.buffer));
      continue;
    }
    // In blocks of 8M halves: random sign and mantissa, exponent fixed at 2^-7.
    for (let first = 0; first < n; first += 8 << 20) {
      const block = new Uint16Array(Math.min(8 << 20, n - first));
      randomFillSync(block);
      for (let i = 0; i < block.length; i++) block[i] = (block[i]! & 0x83ff) | 0x2000;
      writeSync(fd, new Uint8Array(block.buffer));
    }
  }
  closeSync(fd);
  return 8 + json.length + offset;
}

const json = (file: string, value: unknown) => {
  mkdirSync(path.dirname(path.join(out, file)), { recursive: true });
  writeFileSync(path.join(out, file), JSON.stringify(value, null, 2));
};
const tinyJson = (file: string) => JSON.parse(readFileSync(path.join(tiny, file), "utf8")) as Record<string, unknown>;

// SD 1.5's configs: the tiny pipeline's, at full size.
json("model_index.json", tinyJson("model_index.json"));
json("scheduler/scheduler_config.json", tinyJson("scheduler/scheduler_config.json"));
json("unet/config.json", {
  ...tinyJson("unet/config.json"),
  block_out_channels: [320, 640, 1280, 1280],
  down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  cross_attention_dim: 768,
  sample_size: 64,
});
json("vae/config.json", {
  ...tinyJson("vae/config.json"),
  block_out_channels: [128, 256, 512, 512],
  down_block_types: Array(4).fill("DownEncoderBlock2D"),
  up_block_types: Array(4).fill("UpDecoderBlock2D"),
  layers_per_block: 2,
  sample_size: 512,
});
json("text_encoder/config.json", {
  ...tinyJson("text_encoder/config.json"),
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  projection_dim: 768,
});
mkdirSync(path.join(out, "tokenizer"), { recursive: true });
for (const f of ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]) {
  copyFileSync(path.join(tiny, "tokenizer", f), path.join(out, "tokenizer", f));
}
for (const [file, tensors] of readKeys()) {
  mkdirSync(path.dirname(path.join(out, file)), { recursive: true });
  const size = writeSafetensors(path.join(out, file), tensors);
  console.log(`${file}: ${tensors.length} tensors, ${(size / 1e9).toFixed(3)} GB`);
}
