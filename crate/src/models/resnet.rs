//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (the U-Net's and the VAE's).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::{Int, Tensor, TensorData};

use super::{Add, conv2d, conv2d_add, conv2d_with, group_norm_silu};
use crate::weights::{LoadError, TensorLoader, TensorSource};

/// A residual block: GroupNorm, SiLU, 3x3 conv, (+ projected time embedding), GroupNorm, SiLU, 3x3 conv,
/// plus the input (through a 1x1 conv when the channel count changes).
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub(crate) norm1: GroupNorm,
    pub(crate) conv1: Conv2d,
    /// The U-Net's blocks add the time embedding after `conv1`; the VAE's have none.
    pub(crate) time_emb_proj: Option<Linear>,
    pub(crate) norm2: GroupNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// Loads `{prefix}.norm1`, `conv1`, ... ; `temb_channels` is `Some` for the U-Net's blocks.
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self, LoadError> {
        let p = prefix;
        Ok(Self {
            norm1: w.group_norm(&format!("{p}.norm1"), groups, c_in, eps)?,
            conv1: w.conv2d(&format!("{p}.conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: match temb_channels {
                Some(t) => Some(w.linear(&format!("{p}.time_emb_proj"), t, c_out, true)?),
                None => None,
            },
            norm2: w.group_norm(&format!("{p}.norm2"), groups, c_out, eps)?,
            conv2: w.conv2d(&format!("{p}.conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(w.conv2d(&format!("{p}.conv_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    /// The projected time embedding is added with `conv1`'s bias and the shortcut by `conv2`, in their
    /// kernels where ours run ([`conv2d_add`]).
    ///
    /// # Shapes
    /// - x: `[batch, c_in, h, w]`
    /// - temb_silu: `[batch, temb_channels]`, the time embedding already through SiLU (diffusers applies
    ///   it in every block, to the same tensor: the U-Net does it once per call), `None` for VAE
    ///   blocks
    /// - output: `[batch, c_out, h, w]`
    pub fn forward(&self, x: Tensor<4>, temb_silu: Option<&Tensor<2>>) -> Tensor<4> {
        let temb = match (&self.time_emb_proj, temb_silu) {
            (Some(proj), Some(temb)) => Some(super::linear_2d(proj, temb.clone())),
            _ => None,
        };
        let add = Add { per_batch: temb.as_ref(), residual: None };
        let h = conv2d_add(&self.conv1, group_norm_silu(&self.norm1, x.clone()), add);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv2d(conv, x),
            None => x,
        };
        let add = Add { per_batch: None, residual: Some(&shortcut) };
        conv2d_add(&self.conv2, group_norm_silu(&self.norm2, h), add)
    }
}

/// A stride-2 3x3 convolution (`downsamplers.0.conv`). With `padding` 0 (the VAE) the input is padded by
/// one pixel at the right and bottom only, as diffusers does.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub(crate) conv: Conv2d,
    pub(crate) asymmetric_pad: bool,
}

impl Downsample2D {
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        channels: usize,
        padding: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            conv: w.conv2d(&format!("{prefix}.conv"), channels, channels, 3, 2, padding)?,
            asymmetric_pad: padding == 0,
        })
    }

    /// # Shapes
    /// - x: `[batch, c, h, w]` -> `[batch, c, ceil(h / 2), ceil(w / 2)]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if !self.asymmetric_pad {
            return conv2d(&self.conv, x);
        }
        // diffusers pads right and bottom by one, then convolves without padding.
        let bias = self.conv.bias.as_ref().map(|b| b.val());
        conv2d_with(x, &self.conv.weight.val(), bias.as_ref(), 2, [0, 0, 1, 1], Add::NONE)
    }
}

/// Nearest-neighbour upsampling to a target size, then a 3x3 convolution (`upsamplers.0.conv`).
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub(crate) conv: Conv2d,
}

impl Upsample2D {
    pub fn load<S: TensorSource>(w: &mut TensorLoader<S>, prefix: &str, channels: usize) -> Result<Self, LoadError> {
        Ok(Self { conv: w.conv2d(&format!("{prefix}.conv"), channels, channels, 3, 1, 1)? })
    }

    /// # Shapes
    /// - x: `[batch, c, h, w]` -> `[batch, c, size.0, size.1]` (twice the size unless the U-Net's skip
    ///   connections need another one, for latents not divisible by its overall downscale)
    pub fn forward(&self, x: Tensor<4>, size: (usize, usize)) -> Tensor<4> {
        conv2d(&self.conv, upsample_nearest(x, size))
    }
}

/// torch's `F.interpolate(mode="nearest")` to `size`: output pixel `d` reads input pixel
/// `min(floor(d * (in / out)), in - 1)`, the scale computed in f32 as torch does.
pub fn upsample_nearest(x: Tensor<4>, (out_h, out_w): (usize, usize)) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let device = x.device();
    let indices = |n_in: usize, n_out: usize| {
        let scale = n_in as f32 / n_out as f32;
        let idx: Vec<i64> = (0..n_out).map(|d| ((d as f32 * scale).floor() as usize).min(n_in - 1) as i64).collect();
        Tensor::<1, Int>::from_data(TensorData::new(idx, [n_out]), &device)
    };
    x.select(2, indices(h, out_h)).select(3, indices(w, out_w))
}
