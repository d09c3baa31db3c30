//! The U-Net's timestep embedding: diffusers' `Timesteps` (sinusoidal) and `TimestepEmbedding` (MLP).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::weights::{LoadError, TensorLoader, TensorSource};

/// diffusers' `get_timestep_embedding` for one timestep, in f32 as torch computes it:
/// `exp(-ln(10000) * i / (dim / 2 - freq_shift))` frequencies, `[sin, cos]` or `[cos, sin]` when flipped.
pub fn timestep_features(timestep: f32, dim: usize, flip_sin_to_cos: bool, freq_shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let ln_max_period = -(10000f64.ln() as f32);
    let args: Vec<f32> =
        (0..half).map(|i| timestep * ((ln_max_period * i as f32) / (half as f32 - freq_shift)).exp()).collect();
    let sin = args.iter().map(|a| a.sin());
    let cos = args.iter().map(|a| a.cos());
    let mut out: Vec<f32> = if flip_sin_to_cos { cos.chain(sin).collect() } else { sin.chain(cos).collect() };
    // An odd width is zero-padded, as diffusers does.
    out.resize(dim, 0.0);
    out
}

/// `linear_1`, SiLU, `linear_2`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        features: usize,
        dim: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            linear_1: w.linear(&format!("{prefix}.linear_1"), features, dim, true)?,
            linear_2: w.linear(&format!("{prefix}.linear_2"), dim, dim, true)?,
        })
    }

    /// # Shapes
    /// - features: `[batch, features]` -> `[batch, dim]`
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        super::linear_2d(&self.linear_2, silu(super::linear_2d(&self.linear_1, features)))
    }
}

/// The sinusoidal features of `timesteps` (one per batch item) as a `[batch, dim]` tensor.
pub fn timestep_tensor(timesteps: &[f32], dim: usize, flip: bool, shift: f32, device: &Device) -> Tensor<2> {
    let data: Vec<f32> = timesteps.iter().flat_map(|&t| timestep_features(t, dim, flip, shift)).collect();
    Tensor::from_data(TensorData::new(data, [timesteps.len(), dim]), device)
}
