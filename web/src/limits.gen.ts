// Generated from crate/src/limits.rs by the Rust test limits::tests::typescript_limits_are_current.
// Regenerate with UPDATE_PROTOCOL_SAMPLES=1 cargo test -p websd --lib limits.
import type { SchedulerName } from "./protocol";

/** The engine's limits of a generation request (crate::limits). */
export const LIMITS = { maxSide: 4096, maxSteps: 1000, maxBatch: 16, maxGuidance: 50, maxSeed: 9007199254740991, maxConditioningSide: 16384, maxExtraBytes: 1073741824, maxLoraWeight: 10 } as const;

/** diffusers' defaults, as the engine applies them. */
export const DEFAULTS = { steps: 50, guidance: 7.5, img2imgStrength: 0.8, inpaintStrength: 1 } as const;

/** The schedulers, in the order the form lists them. */
export const SCHEDULERS = ["ddpm", "ddim", "pndm", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-karras", "lcm"] as const satisfies readonly SchedulerName[];

/** Their names in the form. */
export const SCHEDULER_LABELS: Record<SchedulerName, string> = {
  "ddpm": "DDPM",
  "ddim": "DDIM",
  "pndm": "PNDM",
  "euler": "Euler",
  "euler-a": "Euler a",
  "dpmpp-2m": "DPM++ 2M",
  "dpmpp-2m-karras": "DPM++ 2M Karras",
  "lcm": "LCM",
};
