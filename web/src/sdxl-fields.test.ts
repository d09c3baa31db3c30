import assert from "node:assert/strict";
import { test } from "node:test";
import { LIMITS } from "./limits.gen";
import { parseSdxl, SDXL_FIELDS, type SdxlField } from "./sdxl-fields";

const empty = (): Record<SdxlField, string> => Object.fromEntries(SDXL_FIELDS.map((f) => [f, ""])) as Record<SdxlField, string>;

test("empty SDXL fields are diffusers' defaults: nothing is sent", () => {
  assert.deepEqual(parseSdxl(empty()), { ok: true, settings: {} });
});

test("SDXL fields become the engine's [width, height] and [x, y] pairs", () => {
  const values = { ...empty(), "prompt-2": "oil painting", "negative-2": "low quality", "original-width": "1024", "original-height": "768" };
  const parsed = parseSdxl({ ...values, "crop-x": "0", "crop-y": "16", "target-width": "1024", "target-height": "1024" });
  assert.deepEqual(parsed, {
    ok: true,
    settings: { prompt2: "oil painting", negativePrompt2: "low quality", originalSize: [1024, 768], crop: [0, 16], targetSize: [1024, 1024] },
  });
});

test("half a pair, a fraction, zero sizes and sizes past the limit name their field", () => {
  const bad = (patch: Partial<Record<SdxlField, string>>) => parseSdxl({ ...empty(), ...patch });
  assert.deepEqual(bad({ "original-width": "1024" }), {
    ok: false,
    field: "original-height",
    message: `Original size: give both numbers, whole pixels from 1 to ${LIMITS.maxConditioningSide}.`,
  });
  assert.equal((bad({ "target-width": "0", "target-height": "5" }) as { field: string }).field, "target-width");
  assert.equal((bad({ "crop-x": "1.5", "crop-y": "0" }) as { field: string }).field, "crop-x");
  assert.equal((bad({ "crop-x": "0", "crop-y": String(LIMITS.maxConditioningSide + 1) }) as { field: string }).field, "crop-y");
  assert.ok(bad({ "crop-x": "0", "crop-y": "0" }).ok, "a crop at 0,0 is fine");
});
