//! The native integration tests in one binary: each test binary links all of burn, cubecl and wgpu, so one
//! binary instead of eight saves most of their build time. `f16_wgpu` stays apart because a device's
//! precision is set once per process, before its first tensor.

#[path = "../common/mod.rs"]
mod common;

mod bad_inputs;
mod cli;
mod clip_fixtures;
mod hub_models;
mod img2img_initial_latents;
mod kernels;
mod lora;
mod module_graph;
mod pipeline_fixtures;
mod prompt_weighting;
mod rng_fixtures;
mod scheduler_fixtures;
mod sdxl;
mod textual_inversion;
mod unet_vae_fixtures;
mod wgpu_pipeline;
