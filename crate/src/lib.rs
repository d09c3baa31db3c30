//! Stable Diffusion in the browser: the same pipeline code runs natively (Flex CPU or wgpu) and as
//! WebAssembly inside a dedicated Web Worker on WebGPU.
//!
//! The backend is chosen at run time through burn's [`Device`](burn::tensor::Device); nothing here is
//! generic over a backend type.

pub mod config;
pub mod error;
pub mod gpu;
pub mod image;
pub mod kernels;
pub mod limits;
pub mod lora;
pub mod manifest;
pub mod memory;
pub mod model_folder;
pub mod models;
pub mod pipeline;
pub mod probe;
pub mod prompt_weighting;
pub mod protocol;
pub mod rng;
pub mod schedulers;
pub mod textual_inversion;
pub mod tokenizer;
pub mod weights;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::Error;
