//! The networks of a Stable Diffusion pipeline, in burn, built from the model's own config files.

pub mod autoencoder_kl;
pub mod clip;
