import assert from "node:assert/strict";
import { test } from "node:test";
import { findStored, loraName, parseLoraRows } from "./loras";
import type { LoraSummary } from "./protocol";

test("LoRA weights: numbers within the engine's limit, the first bad row named", () => {
  assert.deepEqual(parseLoraRows([{ name: "a", weight: "0.8" }, { name: "b", weight: " -1 " }]), {
    ok: true,
    loras: [
      { name: "a", weight: 0.8 },
      { name: "b", weight: -1 },
    ],
  });
  for (const bad of ["", "x", "NaN", "Infinity", "11", "-10.5"]) {
    const parsed = parseLoraRows([{ name: "a", weight: "1" }, { name: "b", weight: bad }]);
    assert.equal(parsed.ok, false, bad);
    if (!parsed.ok) {
      assert.equal(parsed.index, 1);
      assert.match(parsed.message, /LoRA b must be a number from -10 to 10/);
    }
  }
  assert.deepEqual(parseLoraRows([]), { ok: true, loras: [] });
});

test("a LoRA's name is its file's stem, fit for a <lora:name> tag", () => {
  assert.equal(loraName("detail_tweaker.safetensors"), "detail_tweaker");
  assert.equal(loraName("https://huggingface.co/u/r/resolve/main/My%20Style.SAFETENSORS?download=true"), "My Style");
  assert.equal(loraName("a:b<c>.safetensors"), "a_b_c_");
  assert.equal(loraName("noext"), "noext");
});

test("a PNG's LoRA is found by name, else by short hash", () => {
  const l = (name: string, shortHash: string): LoraSummary => ({ name, shortHash, size: 1, sha256: "", source: "", unetLayers: 1, textEncoderLayers: 0 });
  const stored = [l("style", "0123456789ab"), l("detail", "ba9876543210")];
  assert.deepEqual(findStored(stored, "style", "0123456789ab"), { lora: stored[0], otherHash: false });
  assert.deepEqual(findStored(stored, "style", "ffffffffffff"), { lora: stored[0], otherHash: true });
  assert.deepEqual(findStored(stored, "renamed", "ba9876543210"), { lora: stored[1], otherHash: false });
  assert.equal(findStored(stored, "missing", "000000000000"), null);
  assert.deepEqual(findStored(stored, "detail"), { lora: stored[1], otherHash: false });
});
