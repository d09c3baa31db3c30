// SDXL's extra form fields (shown only for SDXL models): the second text encoder's prompts and the
// size micro-conditioning, text values -> GenerateSettings' SDXL fields. Empty means diffusers' default
// (the prompts; the image's size; crop 0,0). Pure: unit-tested in sdxl-fields.test.ts.
import { LIMITS } from "./limits.gen";
import type { GenerateSettings } from "./protocol";

/** The fields' test ids, in the order the form shows them. */
export const SDXL_FIELDS = [
  "prompt-2",
  "negative-2",
  "original-width",
  "original-height",
  "crop-x",
  "crop-y",
  "target-width",
  "target-height",
] as const;
export type SdxlField = (typeof SDXL_FIELDS)[number];

export type SdxlSettings = Pick<GenerateSettings, "prompt2" | "negativePrompt2" | "originalSize" | "crop" | "targetSize">;
export type ParsedSdxl = { ok: true; settings: SdxlSettings } | { ok: false; field: SdxlField; message: string };

/** A pair of whole numbers from two fields: both empty (absent), or both within `min..max`. */
function pair(
  values: Record<SdxlField, string>,
  [a, b]: [SdxlField, SdxlField],
  what: string,
  min: number,
): { ok: true; value?: [number, number] } | { ok: false; field: SdxlField; message: string } {
  const [x, y] = [values[a].trim(), values[b].trim()];
  if (x === "" && y === "") return { ok: true };
  for (const [field, text] of [
    [a, x],
    [b, y],
  ] as const) {
    const n = /^\d+$/.test(text) ? Number(text) : NaN;
    if (!(n >= min && n <= LIMITS.maxConditioningSide)) {
      return { ok: false, field, message: `${what}: give both numbers, whole pixels from ${min} to ${LIMITS.maxConditioningSide}.` };
    }
  }
  return { ok: true, value: [Number(x), Number(y)] };
}

/** The SDXL fields' settings, or the first field that is wrong and why. */
export function parseSdxl(values: Record<SdxlField, string>): ParsedSdxl {
  const settings: SdxlSettings = {};
  if (values["prompt-2"].trim() !== "") settings.prompt2 = values["prompt-2"];
  if (values["negative-2"].trim() !== "") settings.negativePrompt2 = values["negative-2"];
  const original = pair(values, ["original-width", "original-height"], "Original size", 1);
  if (!original.ok) return original;
  const crop = pair(values, ["crop-x", "crop-y"], "Crop top-left", 0);
  if (!crop.ok) return crop;
  const target = pair(values, ["target-width", "target-height"], "Target size", 1);
  if (!target.ok) return target;
  if (original.value) settings.originalSize = original.value;
  if (crop.value) settings.crop = crop.value;
  if (target.value) settings.targetSize = target.value;
  return { ok: true, settings };
}
