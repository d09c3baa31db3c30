// The form's text values -> the engine's GenerateSettings, with the limits the engine enforces
// (crate::limits, generated into limits.gen.ts), so bad input gets a clear message before any work.
// Pure functions: unit-tested in settings.test.ts.
import { LIMITS, SCHEDULER_LABELS, SCHEDULERS } from "./limits.gen";
import type { GenerateSettings, SchedulerName } from "./protocol";

export { DEFAULTS, LIMITS, SCHEDULER_LABELS, SCHEDULERS } from "./limits.gen";

export type Mode = "txt2img" | "img2img" | "inpaint";

/** The largest seed the engine takes: 2^53 - 1 (Number.MAX_SAFE_INTEGER). The seed reaches the worker
 * as a JS number, and serde-wasm-bindgen refuses any number that is not a safe integer (bad-request)
 * before the engine's own check (`limits::MAX_SEED` in `pipeline_request`, crate/src/web/mod.rs)
 * runs, so 2^53 itself already fails there: this is the engine's real boundary. */
export const MAX_SEED: number = LIMITS.maxSeed;

/** The form's fields as typed (strings straight from the inputs). */
export interface FormValues {
  prompt: string;
  negative: string;
  steps: string;
  guidance: string;
  seed: string;
  width: string;
  height: string;
  scheduler: string;
  batch: string;
  strength: string;
}

export type Parsed = { ok: true; settings: GenerateSettings } | { ok: false; field: keyof FormValues; message: string };

function integer(text: string): number | null {
  const t = text.trim();
  return /^\d+$/.test(t) ? Number(t) : null;
}

function decimal(text: string): number | null {
  const t = text.trim();
  if (t === "" || !/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t)) return null;
  const n = Number(t);
  return Number.isFinite(n) ? n : null;
}

/** Checks every field; the first problem found is reported with the field it concerns. */
export function parseSettings(v: FormValues, mode: Mode): Parsed {
  const fail = (field: keyof FormValues, message: string): Parsed => ({ ok: false, field, message });
  const steps = integer(v.steps);
  if (steps === null || steps < 1 || steps > LIMITS.maxSteps) {
    return fail("steps", `Steps must be a whole number from 1 to ${LIMITS.maxSteps} (got "${v.steps}").`);
  }
  const guidance = decimal(v.guidance);
  if (guidance === null || guidance < 0 || guidance > LIMITS.maxGuidance) {
    return fail("guidance", `Guidance must be a number from 0 to ${LIMITS.maxGuidance} (got "${v.guidance}").`);
  }
  const seed = integer(v.seed);
  // Above 2^53 Number() rounds (2^53 + 1 reads as 2^53), never below it: the comparison still holds.
  if (seed === null || seed > LIMITS.maxSeed) {
    return fail("seed", `The seed must be a whole number from 0 to ${LIMITS.maxSeed} (2^53 - 1) (got "${v.seed}").`);
  }
  for (const field of ["width", "height"] as const) {
    const n = integer(v[field]);
    if (n === null || n < 8 || n % 8 !== 0) {
      return fail(field, `The ${field} must be a multiple of 8 from 8 to ${LIMITS.maxSide} pixels (got "${v[field]}").`);
    }
  }
  const [w, h] = [Number(v.width.trim()), Number(v.height.trim())];
  if (w > LIMITS.maxSide || h > LIMITS.maxSide) {
    // The engine's own message (pipeline.rs check_inputs), word for word.
    return fail(w > LIMITS.maxSide ? "width" : "height", `${w}x${h} is larger than the ${LIMITS.maxSide} px this app supports`);
  }
  if (!(SCHEDULERS as readonly string[]).includes(v.scheduler)) {
    return fail("scheduler", `Unknown scheduler "${v.scheduler}".`);
  }
  const batch = integer(v.batch);
  if (batch === null || batch < 1 || batch > LIMITS.maxBatch) {
    return fail("batch", `The batch size must be from 1 to ${LIMITS.maxBatch} (got "${v.batch}").`);
  }
  const settings: GenerateSettings = {
    prompt: v.prompt,
    negativePrompt: v.negative,
    steps,
    guidance,
    seed,
    width: Number(v.width.trim()),
    height: Number(v.height.trim()),
    batch,
    scheduler: v.scheduler as SchedulerName,
  };
  if (mode !== "txt2img") {
    const strength = decimal(v.strength);
    if (strength === null || strength <= 0 || strength > 1) {
      return fail("strength", `Strength must be a number above 0 and at most 1 (got "${v.strength}").`);
    }
    if (Math.floor(steps * strength) < 1) {
      return fail("strength", `Strength ${strength} with ${steps} steps leaves no denoising step: raise either.`);
    }
    settings.strength = strength;
  }
  return { ok: true, settings };
}

/** The form values that reproduce `s` (for "reuse settings"). */
export function formValuesOf(s: GenerateSettings): Partial<FormValues> {
  const out: Partial<FormValues> = { prompt: s.prompt, negative: s.negativePrompt ?? "" };
  if (s.steps !== undefined) out.steps = String(s.steps);
  if (s.guidance !== undefined) out.guidance = String(s.guidance);
  if (s.seed !== undefined) out.seed = String(s.seed);
  if (s.width !== undefined) out.width = String(s.width);
  if (s.height !== undefined) out.height = String(s.height);
  if (s.scheduler !== undefined) out.scheduler = s.scheduler;
  if (s.batch !== undefined) out.batch = String(s.batch);
  if (s.strength !== undefined) out.strength = String(s.strength);
  return out;
}

/** A random seed below 2^32 (readable, and what most tools use). */
export function randomSeed(): number {
  const word = new Uint32Array(1);
  crypto.getRandomValues(word);
  return word[0]!;
}
