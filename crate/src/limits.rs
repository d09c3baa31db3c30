//! Every limit and default of a generation request, in one place: the pipeline checks them
//! ([`crate::pipeline::StableDiffusion::validate`]), the CLI and the worker take their defaults from
//! here, and the page's form reads the same values from `web/src/limits.gen.ts`, which the test
//! `limits::tests::typescript_limits_are_current` writes from this module.

use crate::schedulers::SchedulerKind;

/// Largest width or height, in pixels (a multiple of 8); the GPU memory plan may refuse less.
pub const MAX_SIDE: usize = crate::config::MAX_IMAGE_SIDE;
/// Largest SDXL size conditioning (`original_size`, `target_size`) and crop offset, in pixels: sizes the
/// model was trained on reach 4096; four times that covers any upscaled source.
pub const MAX_CONDITIONING_SIDE: usize = 4 * MAX_SIDE;
/// Largest total of weights a browser engine holds in f32 (on a GPU without `shader-f16`): WebGPU states
/// no GPU memory size, so a model past this (SDXL's 13.9 GB as f32, 6.9 GB as f16) is refused before its
/// weights download rather than failing halfway through the upload; SD 1.x/2.x (4-5 GB as f32) run.
pub const MAX_F32_WEIGHT_BYTES: u64 = 8 << 30;
/// Most denoising steps.
pub const MAX_STEPS: usize = 1000;
/// Most images per prompt.
pub const MAX_BATCH: usize = 16;
/// Largest classifier-free guidance scale (A1111's slider stops at 30; past 50 images are noise).
pub const MAX_GUIDANCE: f32 = 50.0;
/// Largest seed the page can send: JavaScript's largest exact integer, 2^53 - 1 (serde-wasm-bindgen
/// refuses a number past it as not an integer).
pub const MAX_SEED: u64 = (1 << 53) - 1;
/// Largest LoRA or embedding file the browser takes (it is read whole into the wasm heap to be
/// parsed): SD 1.x LoRAs are 10-300 MB, the largest SDXL ones under 1 GB; embeddings a few KB.
pub const MAX_EXTRA_BYTES: u64 = 1 << 30;
/// Largest LoRA weight (A1111's slider spans -1..2; past 10 an image is noise).
pub const MAX_LORA_WEIGHT: f32 = 10.0;
/// diffusers' default steps (for models without recommendations in their manifest).
pub const DEFAULT_STEPS: usize = 50;
/// diffusers' default guidance scale (`guidance_scale`).
pub const DEFAULT_GUIDANCE: f32 = 7.5;
/// diffusers' default img2img strength.
pub const IMG2IMG_STRENGTH: f32 = 0.8;
/// diffusers' default inpainting strength.
pub const INPAINT_STRENGTH: f32 = 1.0;

/// diffusers' default strength: 0.8 for img2img, 1 for inpainting (and txt2img).
pub fn default_strength(init_image: bool, mask: bool) -> f32 {
    if init_image && !mask { IMG2IMG_STRENGTH } else { INPAINT_STRENGTH }
}

/// `web/src/limits.gen.ts`.
pub fn typescript() -> String {
    let names: Vec<String> = SchedulerKind::ALL.iter().map(|k| format!("\"{}\"", k.name())).collect();
    let labels: Vec<String> =
        SchedulerKind::ALL.iter().map(|k| format!("  \"{}\": \"{}\",\n", k.name(), k.label())).collect();
    format!(
        "// Generated from crate/src/limits.rs by the Rust test limits::tests::typescript_limits_are_current.\n\
         // Regenerate with UPDATE_PROTOCOL_SAMPLES=1 cargo test -p websd --lib limits.\n\
         import type {{ SchedulerName }} from \"./protocol\";\n\n\
         /** The engine's limits of a generation request (crate::limits). */\n\
         export const LIMITS = {{ maxSide: {MAX_SIDE}, maxSteps: {MAX_STEPS}, maxBatch: {MAX_BATCH}, maxGuidance: {MAX_GUIDANCE}, maxSeed: {MAX_SEED}, maxConditioningSide: {MAX_CONDITIONING_SIDE}, maxExtraBytes: {MAX_EXTRA_BYTES}, maxLoraWeight: {MAX_LORA_WEIGHT} }} as const;\n\n\
         /** diffusers' defaults, as the engine applies them. */\n\
         export const DEFAULTS = {{ steps: {DEFAULT_STEPS}, guidance: {DEFAULT_GUIDANCE}, img2imgStrength: {IMG2IMG_STRENGTH}, inpaintStrength: {INPAINT_STRENGTH} }} as const;\n\n\
         /** The schedulers, in the order the form lists them. */\n\
         export const SCHEDULERS = [{}] as const satisfies readonly SchedulerName[];\n\n\
         /** Their names in the form. */\n\
         export const SCHEDULER_LABELS: Record<SchedulerName, string> = {{\n{}}};\n",
        names.join(", "),
        labels.concat(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page's copy must be this module's (`tsc` checks the generated file with the page).
    #[test]
    fn typescript_limits_are_current() {
        crate::protocol::check_generated("limits.gen.ts", &typescript(), "limits");
    }

    #[test]
    fn defaults_are_within_the_limits() {
        assert!((1..=MAX_STEPS).contains(&DEFAULT_STEPS));
        assert!((0.0..=MAX_GUIDANCE).contains(&DEFAULT_GUIDANCE));
        assert_eq!((default_strength(true, false), default_strength(true, true)), (0.8, 1.0));
        assert_eq!(MAX_SIDE % 8, 0);
    }
}
