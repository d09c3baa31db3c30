//! diffusers' `UNet2DConditionModel`: the noise predictor, built from `unet/config.json`.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::embeddings::{TimestepEmbedding, timestep_tensor};
use super::group_norm;
use super::unet_2d_blocks::{
    BlockAttention, BlockSettings, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D, UpBlockChannels,
};
use crate::config::UNet2DConditionConfig;
use crate::weights::{IntoTensorSource, LoadError, TensorLoader};

/// The U-Net: timestep embedding, `conv_in`, down blocks, mid block, up blocks (consuming the down
/// blocks' skip connections), `conv_norm_out`, SiLU, `conv_out`.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    time_embedding: TimestepEmbedding,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock2D>,
    mid_block: UNetMidBlock2DCrossAttn,
    up_blocks: Vec<UpBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    time_features: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
}

/// Refuses configs that ask for something this implementation does not do, rather than misreading them.
pub fn check_supported(c: &UNet2DConditionConfig) -> Result<(), LoadError> {
    let unsupported = |what: String| Err(LoadError::Unsupported(format!("unet/config.json: {what}")));
    if let Some(kind) = &c.addition_embed_type {
        return unsupported(format!("addition_embed_type {kind:?} (SDXL conditioning is not implemented yet)"));
    }
    if let Some(kind) = &c.class_embed_type {
        return unsupported(format!("class_embed_type {kind:?}"));
    }
    if let Some(dim) = c.time_cond_proj_dim {
        return unsupported(format!("time_cond_proj_dim {dim} (LCM-distilled guidance embedding)"));
    }
    if let Some(kind) = &c.encoder_hid_dim_type {
        return unsupported(format!("encoder_hid_dim_type {kind:?}"));
    }
    if c.resnet_time_scale_shift != "default" {
        return unsupported(format!("resnet_time_scale_shift {:?}", c.resnet_time_scale_shift));
    }
    if c.time_embedding_type != "positional" || c.attention_type != "default" || c.act_fn != "silu" {
        return unsupported(format!(
            "time_embedding_type {:?}, attention_type {:?}, act_fn {:?}",
            c.time_embedding_type, c.attention_type, c.act_fn
        ));
    }
    if c.center_input_sample || c.dual_cross_attention || c.mid_block_scale_factor != 1.0 {
        return unsupported("center_input_sample, dual_cross_attention or mid_block_scale_factor != 1".into());
    }
    if c.conv_in_kernel != 3 || c.conv_out_kernel != 3 {
        return unsupported(format!("conv kernels {}/{}", c.conv_in_kernel, c.conv_out_kernel));
    }
    if c.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
        return unsupported(format!("mid_block_type {:?}", c.mid_block_type));
    }
    let n = c.block_out_channels.len();
    if n == 0 || c.down_block_types.len() != n || c.up_block_types.len() != n {
        return unsupported(format!(
            "{n} block_out_channels for {} down / {} up blocks",
            c.down_block_types.len(),
            c.up_block_types.len()
        ));
    }
    Ok(())
}

/// Whether a block type has cross-attention; other types are refused.
fn block_has_attention(kind: &str, plain: &str, cross: &str) -> Result<bool, LoadError> {
    match kind {
        k if k == plain => Ok(false),
        k if k == cross => Ok(true),
        other => Err(LoadError::Unsupported(format!("unet/config.json: block type {other:?}"))),
    }
}

impl UNet2DConditionModel {
    /// Builds the U-Net described by `config` from a weights file (fp32 or fp16; the tensors must match
    /// the config exactly, and every tensor of the file must be used).
    pub fn load<S: IntoTensorSource>(
        config: &UNet2DConditionConfig,
        source: S,
        device: &Device,
    ) -> Result<Self, LoadError> {
        config.check()?;
        check_supported(config)?;
        let mut w = TensorLoader::new(source, |name: &str| Some(name.to_string()), device)?;
        let channels = &config.block_out_channels;
        let n = channels.len();
        let time_features = channels[0];
        let temb_channels = channels[0] * 4;
        let settings = BlockSettings {
            temb_channels,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            cross_attention_dim: config.cross_attention_dim,
            linear_projection: config.use_linear_projection,
            upcast_attention: config.upcast_attention,
        };
        // diffusers' naming: `attention_head_dim` holds the head *count* unless `num_attention_heads` is given.
        let heads = config.num_attention_heads.as_ref().unwrap_or(&config.attention_head_dim);
        let attention_of = |i: usize, has: bool| {
            has.then(|| BlockAttention {
                heads: heads.get(i),
                transformer_layers: config.transformer_layers_per_block.get(i),
            })
        };

        let time_embedding = TimestepEmbedding::load(&mut w, "time_embedding", time_features, temb_channels)?;
        let conv_in = w.conv2d("conv_in", config.in_channels, channels[0], 3, 1, 1)?;

        let mut down_blocks = Vec::new();
        for (i, kind) in config.down_block_types.iter().enumerate() {
            let has = block_has_attention(kind, "DownBlock2D", "CrossAttnDownBlock2D")?;
            let c_in = if i == 0 { channels[0] } else { channels[i - 1] };
            let downsample = (i + 1 < n).then_some(config.downsample_padding);
            let prefix = format!("down_blocks.{i}");
            let layers = config.layers_per_block.get(i);
            down_blocks.push(DownBlock2D::load(
                &mut w,
                &prefix,
                c_in,
                channels[i],
                layers,
                attention_of(i, has),
                downsample,
                settings,
            )?);
        }

        let mid_attention = attention_of(n - 1, true).expect("the mid block has attention");
        let mid_block = UNetMidBlock2DCrossAttn::load(&mut w, "mid_block", channels[n - 1], mid_attention, settings)?;

        let mut up_blocks = Vec::new();
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let has = block_has_attention(kind, "UpBlock2D", "CrossAttnUpBlock2D")?;
            let level = n - 1 - i; // the down block this up block mirrors
            let ch = UpBlockChannels {
                c_in: channels[level.saturating_sub(1)],
                c_prev: if i == 0 { channels[n - 1] } else { channels[level + 1] },
                c_out: channels[level],
            };
            let layers = config.layers_per_block.get(level) + 1;
            let prefix = format!("up_blocks.{i}");
            up_blocks.push(UpBlock2D::load(
                &mut w,
                &prefix,
                ch,
                layers,
                attention_of(level, has),
                i + 1 < n,
                settings,
            )?);
        }

        let conv_norm_out = w.group_norm("conv_norm_out", config.norm_num_groups, channels[0], config.norm_eps)?;
        let conv_out = w.conv2d("conv_out", channels[0], config.out_channels, 3, 1, 1)?;
        w.finish()?;
        Ok(Self {
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            time_features,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        })
    }

    /// [`Self::forward`] on at most `samples` samples per call (the plan that keeps every buffer under
    /// the cap, [`crate::memory`]). Exact: the samples are independent.
    ///
    /// # Shapes
    /// as [`Self::forward`]
    pub fn forward_in_calls(
        &self,
        sample: Tensor<4>,
        timestep: f32,
        encoder_hidden_states: Tensor<3>,
        samples: usize,
    ) -> Tensor<4> {
        let batch = sample.dims()[0];
        if samples >= batch {
            return self.forward(sample, timestep, encoder_hidden_states);
        }
        let calls = (0..batch).step_by(samples.max(1)).map(|first| {
            let n = samples.min(batch - first);
            self.forward(
                sample.clone().narrow(0, first, n),
                timestep,
                encoder_hidden_states.clone().narrow(0, first, n),
            )
        });
        Tensor::cat(calls.collect(), 0)
    }

    /// Predicts the noise (or v) in `sample` at `timestep`, conditioned on the text embeddings.
    ///
    /// # Shapes
    /// - sample: `[batch, in_channels, h, w]` (latents; 9 channels for inpainting: latents, mask, masked-image latents)
    /// - encoder_hidden_states: `[batch, text_tokens, cross_attention_dim]`
    /// - output: `[batch, out_channels, h, w]`
    pub fn forward(&self, sample: Tensor<4>, timestep: f32, encoder_hidden_states: Tensor<3>) -> Tensor<4> {
        let batch = sample.dims()[0];
        let device = sample.device();
        let features = timestep_tensor(
            &vec![timestep; batch],
            self.time_features,
            self.flip_sin_to_cos,
            self.freq_shift as f32,
            &device,
        );
        let temb = self.time_embedding.forward(features);
        let context = &encoder_hidden_states;

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        x = self.mid_block.forward(x, &temb, context);
        for block in &self.up_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        self.conv_out.forward(silu(group_norm(&self.conv_norm_out, x)))
    }
}
