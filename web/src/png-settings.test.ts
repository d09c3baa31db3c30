import assert from "node:assert/strict";
import { test } from "node:test";
import { deflateSync } from "node:zlib";
import { parseParameters, pngTextChunks } from "./png-settings";

/** A PNG's signature and chunks (CRCs zeroed: the reader does not check them). */
function png(chunks: [string, Uint8Array][]): Uint8Array {
  const parts: number[] = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  for (const [type, data] of [["IHDR", new Uint8Array(13)] as [string, Uint8Array], ...chunks, ["IEND", new Uint8Array(0)] as [string, Uint8Array]]) {
    const n = data.length;
    parts.push(n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255, ...Buffer.from(type, "latin1"), ...data, 0, 0, 0, 0);
  }
  return new Uint8Array(parts);
}
const bytes = (...parts: (string | number[] | Uint8Array)[]): Uint8Array =>
  new Uint8Array(parts.flatMap((p) => (typeof p === "string" ? [...Buffer.from(p, "utf8")] : [...p])));

const OURS =
  "a photo of an astronaut riding a horse\nNegative prompt: blurry\nSteps: 8, Sampler: DDIM, CFG scale: 7.5, Seed: 0, Size: 64x64, Model hash: 0123456789, Model: tiny-sd";
const A1111 = [
  "masterpiece, (red hair:1.2), 1girl <lora:detail:0.6>",
  "on a hill",
  "Negative prompt: lowres, bad anatomy",
  "blurry",
  'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 1234567890, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, Lora hashes: "detail: 1a2b3c4d5e6f", Version: v1.10.1',
].join("\n");

test("our PNG's parameters fill every field", () => {
  const s = parseParameters(OURS);
  assert.deepEqual(s.values, {
    prompt: "a photo of an astronaut riding a horse",
    negative: "blurry",
    steps: "8",
    scheduler: "ddim",
    guidance: "7.5",
    seed: "0",
    width: "64",
    height: "64",
  });
  assert.equal(s.model, "tiny-sd");
  assert.equal(s.imageMode, false);
  assert.deepEqual(s.notApplied, []);
});

test("A1111's parameters: multi-line prompts, schedule type, quoted values; what cannot be applied is named", () => {
  const s = parseParameters(A1111);
  assert.equal(s.values.prompt, "masterpiece, (red hair:1.2), 1girl \non a hill");
  assert.equal(s.values.negative, "lowres, bad anatomy\nblurry");
  assert.equal(s.values.scheduler, "dpmpp-2m-karras");
  assert.deepEqual([s.values.steps, s.values.guidance, s.values.seed, s.values.width, s.values.height], ["30", "6", "1234567890", "512", "768"]);
  assert.equal(s.values.strength, "0.45");
  assert.equal(s.imageMode, true);
  assert.equal(s.model, "v1-5-pruned-emaonly");
  assert.deepEqual(s.loras, [{ name: "detail", weight: 0.6 }]);
  assert.deepEqual(s.loraHashes, { detail: "1a2b3c4d5e6f" });
  assert.deepEqual(s.notApplied, ["Clip skip: 2", "Version: v1.10.1"]);
});

test("LoRA tags leave the prompt for the LoRA list: weights, repeats, a third argument, a bad weight", () => {
  const s = parseParameters(
    'a cat <lora:style:0.8>, <lora:detail> <lora:style:0.5> <lora:two:0.7:0.2> <lora:bad:heavy>\nSteps: 8, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 64x64, Lora hashes: "style: 0123456789ab, detail: ba9876543210", TI hashes: "tiny-style: 00112233aabb"',
  );
  assert.equal(s.values.prompt, "a cat ,");
  assert.deepEqual(s.loras, [
    { name: "style", weight: 0.5 },
    { name: "detail", weight: 1 },
    { name: "two", weight: 0.7 },
  ]);
  assert.deepEqual(s.loraHashes, { style: "0123456789ab", detail: "ba9876543210" });
  assert.deepEqual(s.embeddingHashes, { "tiny-style": "00112233aabb" });
  assert.deepEqual(s.notApplied, ["<lora:bad:heavy> (its weight is not a number)"]);
});

test("samplers map to schedulers, or are named when there is none", () => {
  const line = (sampler: string) => parseParameters(`x\nSteps: 1, Sampler: ${sampler}, Seed: 1`);
  assert.equal(line("Euler a").values.scheduler, "euler-a");
  assert.equal(line("PLMS").values.scheduler, "pndm");
  assert.equal(line("DPM++ 2M Karras").values.scheduler, "dpmpp-2m-karras");
  assert.equal(line("DPM++ 2M, Schedule type: Automatic").values.scheduler, "dpmpp-2m");
  const heun = line("Heun");
  assert.equal(heun.values.scheduler, undefined);
  assert.deepEqual(heun.notApplied, ["Sampler: Heun (no such scheduler here)"]);
  assert.deepEqual(line("Euler, Schedule type: Karras").notApplied, ["Sampler: Euler Karras (no such scheduler here)"]);
});

test("a text without a settings line is all prompt", () => {
  const s = parseParameters("just a prompt, with: a colon");
  assert.equal(s.values.prompt, "just a prompt, with: a colon");
  assert.equal(s.values.steps, undefined);
  assert.deepEqual(s.notApplied, ["the settings line (none found: only the prompt was read)"]);
});

test("text chunks: tEXt (Latin-1), iTXt plain and compressed, zTXt; not a PNG is null", async () => {
  const file = png([
    ["tEXt", bytes("parameters", [0], [0x63, 0x61, 0x66, 0xe9])],
    ["iTXt", bytes("plain", [0, 0, 0], "en", [0], "", [0], "héllo")],
    ["iTXt", bytes("packed", [0, 1, 0], "", [0], "", [0], deflateSync(Buffer.from("compressed ünicode")))],
    ["zTXt", bytes("old", [0, 0], deflateSync(Buffer.from("zipped")))],
  ]);
  assert.deepEqual(await pngTextChunks(file), { parameters: "café", plain: "héllo", packed: "compressed ünicode", old: "zipped" });
  assert.equal(await pngTextChunks(new Uint8Array([1, 2, 3])), null);
  // A truncated file gives what it has.
  assert.deepEqual(await pngTextChunks(file.subarray(0, 40)), {});
  // Our own PNG's chunk, round trip.
  const ours = png([["iTXt", bytes("parameters", [0, 0, 0], [0], [0], OURS)]]);
  assert.equal(parseParameters((await pngTextChunks(ours))!["parameters"]!).values.seed, "0");
});
