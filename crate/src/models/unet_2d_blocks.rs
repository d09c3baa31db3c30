//! The U-Net's blocks: `DownBlock2D`/`CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn` and
//! `UpBlock2D`/`CrossAttnUpBlock2D` (one type each for the plain and cross-attention variants: the
//! plain one simply has no attentions).

use burn::module::Module;
use burn::tensor::Tensor;

use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::transformer_2d::{Transformer2DModel, Transformer2DShape};
use crate::weights::{LoadError, TensorLoader, TensorSource};

/// The per-block settings shared by all blocks of a U-Net.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub cross_attention_dim: usize,
    pub linear_projection: bool,
    pub upcast_attention: bool,
}

/// Attention settings of one block; `None` for the blocks without cross-attention.
#[derive(Debug, Clone, Copy)]
pub struct BlockAttention {
    pub heads: usize,
    pub transformer_layers: usize,
}

fn transformer<S: TensorSource>(
    w: &mut TensorLoader<S>,
    prefix: &str,
    channels: usize,
    attn: BlockAttention,
    s: BlockSettings,
) -> Result<Transformer2DModel, LoadError> {
    let shape = Transformer2DShape {
        channels,
        heads: attn.heads,
        layers: attn.transformer_layers,
        cross_attention_dim: s.cross_attention_dim,
        groups: s.groups,
        linear_projection: s.linear_projection,
        upcast_attention: s.upcast_attention,
    };
    Transformer2DModel::load(w, prefix, shape)
}

/// ResNet blocks (each followed by a transformer in the cross-attention variant), then a downsampler
/// (except in the last block). Every intermediate output is a skip connection for the up blocks.
#[derive(Module, Debug)]
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    #[allow(clippy::too_many_arguments)]
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        attention: Option<BlockAttention>,
        downsample_padding: Option<usize>,
        s: BlockSettings,
    ) -> Result<Self, LoadError> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let c = if j == 0 { c_in } else { c_out };
            let p = format!("{prefix}.resnets.{j}");
            resnets.push(ResnetBlock2D::load(w, &p, c, c_out, Some(s.temb_channels), s.groups, s.eps)?);
            if let Some(attn) = attention {
                attentions.push(transformer(w, &format!("{prefix}.attentions.{j}"), c_out, attn, s)?);
            }
        }
        let downsampler = match downsample_padding {
            Some(padding) => Some(Downsample2D::load(w, &format!("{prefix}.downsamplers.0"), c_out, padding)?),
            None => None,
        };
        Ok(Self { resnets, attentions, downsampler })
    }

    /// # Shapes
    /// - x: `[batch, c_in, h, w]` -> `[batch, c_out, h', w']` (halved when the block downsamples)
    /// - temb: `[batch, temb_channels]`, through SiLU ([`ResnetBlock2D::forward`]); context:
    ///   `[batch, text_tokens, cross_attention_dim]`
    /// - every intermediate output is pushed to `skips`
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attention) = self.attentions.get(j) {
                x = attention.forward(x, context);
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// ResNet, then (transformer, ResNet) pairs, at the lowest resolution.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        channels: usize,
        attention: BlockAttention,
        s: BlockSettings,
    ) -> Result<Self, LoadError> {
        let resnet = |w: &mut TensorLoader<S>, j: usize| {
            let p = format!("{prefix}.resnets.{j}");
            ResnetBlock2D::load(w, &p, channels, channels, Some(s.temb_channels), s.groups, s.eps)
        };
        let first = resnet(w, 0)?;
        let attention = transformer(w, &format!("{prefix}.attentions.0"), channels, attention, s)?;
        let second = resnet(w, 1)?;
        Ok(Self { resnets: vec![first, second], attentions: vec![attention] })
    }

    /// # Shapes
    /// - x: `[batch, channels, h, w]`, returned in the same shape
    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attention.forward(x, context), Some(temb));
        }
        x
    }
}

/// ResNet blocks on the input concatenated with the matching skip connection (each followed by a
/// transformer in the cross-attention variant), then an upsampler (except in the last block).
#[derive(Module, Debug)]
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

/// The channel counts of an up block, as diffusers derives them from `block_out_channels`.
#[derive(Debug, Clone, Copy)]
pub struct UpBlockChannels {
    /// Channels of the down block this one mirrors one level deeper (the skips of its last ResNet).
    pub c_in: usize,
    /// Channels coming from the previous up block (or the mid block).
    pub c_prev: usize,
    pub c_out: usize,
}

impl UpBlock2D {
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        channels: UpBlockChannels,
        layers: usize,
        attention: Option<BlockAttention>,
        upsample: bool,
        s: BlockSettings,
    ) -> Result<Self, LoadError> {
        let UpBlockChannels { c_in, c_prev, c_out } = channels;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j + 1 == layers { c_in } else { c_out };
            let input = if j == 0 { c_prev } else { c_out };
            let p = format!("{prefix}.resnets.{j}");
            resnets.push(ResnetBlock2D::load(w, &p, input + skip, c_out, Some(s.temb_channels), s.groups, s.eps)?);
            if let Some(attn) = attention {
                attentions.push(transformer(w, &format!("{prefix}.attentions.{j}"), c_out, attn, s)?);
            }
        }
        let upsampler =
            if upsample { Some(Upsample2D::load(w, &format!("{prefix}.upsamplers.0"), c_out)?) } else { None };
        Ok(Self { resnets, attentions, upsampler })
    }

    /// # Shapes
    /// - x: `[batch, c_prev, h, w]`; pops one skip per ResNet from `skips`
    /// - output: `[batch, c_out, h', w']`, upsampled to the size of the next skip when the block upsamples
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("the down blocks pushed one skip per up-block ResNet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attention) = self.attentions.get(j) {
                x = attention.forward(x, context);
            }
        }
        if let Some(up) = &self.upsampler {
            let [_, _, h, w] = x.dims();
            // diffusers upsamples to the next skip's size, which is 2x unless the latent size is not
            // divisible by the U-Net's overall downscale.
            let size = skips.last().map(|s| (s.dims()[2], s.dims()[3])).unwrap_or((2 * h, 2 * w));
            x = up.forward(x, size);
        }
        x
    }
}
