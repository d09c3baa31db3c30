//! diffusers' `Transformer2DModel` for continuous (image) inputs: the U-Net's spatial transformer.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use super::attention::BasicTransformerBlock;
use super::{Add, group_norm, linear};
use crate::weights::{LoadError, TensorLoader, TensorSource};

/// `proj_in`/`proj_out`: 1x1 convolutions (SD 1.x) or linear layers (`use_linear_projection`, SD 2.x).
#[derive(Module, Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        linear: bool,
    ) -> Result<Self, LoadError> {
        Ok(if linear {
            Self::Linear(w.linear(prefix, c_in, c_out, true)?)
        } else {
            Self::Conv(w.conv2d(prefix, c_in, c_out, 1, 1, 0)?)
        })
    }
}

/// GroupNorm, `proj_in`, transformer blocks over the `h * w` tokens, `proj_out`, plus the input.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

/// What a `Transformer2DModel` is built from (the block's channels and the U-Net config's fields).
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DShape {
    /// Channels in and out (= heads x head_dim).
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Transformer blocks (`transformer_layers_per_block`).
    pub layers: usize,
    /// Text embedding width.
    pub cross_attention_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// `use_linear_projection`.
    pub linear_projection: bool,
    /// `upcast_attention`.
    pub upcast_attention: bool,
}

impl Transformer2DModel {
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        shape: Transformer2DShape,
    ) -> Result<Self, LoadError> {
        let (c, p) = (shape.channels, prefix);
        if shape.heads == 0 || c % shape.heads != 0 {
            return Err(LoadError::Unsupported(format!("{p}: {c} channels do not split into {} heads", shape.heads)));
        }
        let head_dim = c / shape.heads;
        Ok(Self {
            norm: w.group_norm(&format!("{p}.norm"), shape.groups, c, 1e-6)?,
            proj_in: Projection::load(w, &format!("{p}.proj_in"), c, c, shape.linear_projection)?,
            transformer_blocks: (0..shape.layers)
                .map(|i| {
                    let block = format!("{p}.transformer_blocks.{i}");
                    let (heads, context) = (shape.heads, shape.cross_attention_dim);
                    BasicTransformerBlock::load(w, &block, c, heads, head_dim, context, shape.upcast_attention)
                })
                .collect::<Result<_, _>>()?,
            proj_out: Projection::load(w, &format!("{p}.proj_out"), c, c, shape.linear_projection)?,
        })
    }

    /// # Shapes
    /// - x: `[batch, channels, h, w]`, returned in the same shape
    /// - context: `[batch, text_tokens, cross_attention_dim]`
    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let to_tokens = |t: Tensor<4>| t.reshape([b, c, h * w]).swap_dims(1, 2);
        let to_image = |t: Tensor<3>| t.swap_dims(1, 2).reshape([b, c, h, w]);
        let normed = group_norm(&self.norm, x.clone());
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(super::conv2d(conv, normed)),
            Projection::Linear(layer) => linear(layer, to_tokens(normed)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context);
        }
        match &self.proj_out {
            Projection::Conv(conv) => {
                super::conv2d_add(conv, to_image(tokens), Add { per_batch: None, residual: Some(&x) })
            }
            Projection::Linear(layer) => to_image(linear(layer, tokens)) + x,
        }
    }
}
