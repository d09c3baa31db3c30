//! The networks of a Stable Diffusion pipeline, in burn, built from the model's own config files. File
//! and type names follow diffusers (`unet_2d_condition`, `resnet`, `transformer_2d`, `autoencoder_kl`).

pub mod attention;
pub mod autoencoder_kl;
pub mod clip;
pub mod embeddings;
pub mod resnet;
pub mod transformer_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
