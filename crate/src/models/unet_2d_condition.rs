//! diffusers' `UNet2DConditionModel`: the noise predictor, built from `unet/config.json`.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use super::embeddings::{TimestepEmbedding, timestep_tensor};
use super::group_norm_silu;
use super::unet_2d_blocks::{
    BlockAttention, BlockSettings, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D, UpBlockChannels,
};
use crate::config::UNet2DConditionConfig;
use crate::weights::{IntoTensorSource, LoadError, TensorLoader};

/// SDXL's micro-conditioning (diffusers' `added_cond_kwargs` for `addition_embed_type: "text_time"`).
#[derive(Debug, Clone)]
pub struct TextTimeConditioning {
    /// The pooled, projected text embedding of `text_encoder_2`. `[batch, projection_dim]`
    pub text_embeds: Tensor<2>,
    /// Per sample: original size (height, width), crop top-left (top, left), target size (height, width).
    pub time_ids: Vec<[f32; 6]>,
}

impl TextTimeConditioning {
    /// Samples `first..first + n`.
    pub fn narrow(&self, first: usize, n: usize) -> Self {
        Self {
            text_embeds: self.text_embeds.clone().narrow(0, first, n),
            time_ids: self.time_ids[first..first + n].to_vec(),
        }
    }

    /// `self` then `other`, along the batch.
    pub fn cat(self, other: Self) -> Self {
        let mut time_ids = self.time_ids;
        time_ids.extend(other.time_ids);
        Self { text_embeds: Tensor::cat(vec![self.text_embeds, other.text_embeds], 0), time_ids }
    }

    /// Each sample `times` times in a row (diffusers' `repeat` over images per prompt).
    pub fn repeat(&self, times: usize) -> Self {
        let [b, d] = self.text_embeds.dims();
        let text_embeds = self.text_embeds.clone().unsqueeze_dim::<3>(1).expand([b, times, d]).reshape([b * times, d]);
        let time_ids = self.time_ids.iter().flat_map(|t| std::iter::repeat_n(*t, times)).collect();
        Self { text_embeds, time_ids }
    }
}

/// SDXL's `add_time_proj` + `add_embedding`: the six size numbers' sinusoidal features after the pooled
/// text embedding, through an MLP, added to the timestep embedding.
#[derive(Module, Debug)]
struct TextTimeEmbedding {
    add_embedding: TimestepEmbedding,
    time_features: usize,
}

/// The U-Net: timestep embedding (plus SDXL's text-time embedding), `conv_in`, down blocks, mid block,
/// up blocks (consuming the down blocks' skip connections), `conv_norm_out`, SiLU, `conv_out`.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TextTimeEmbedding>,
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
    match (&c.addition_embed_type, c.addition_time_embed_dim, c.projection_class_embeddings_input_dim) {
        (None, ..) => {}
        (Some(kind), Some(_), Some(_)) if kind == "text_time" => {}
        (Some(kind), ..) if kind == "text_time" => {
            return Err(LoadError::Config(crate::config::ConfigError::new(
                UNet2DConditionConfig::FILE,
                "addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim",
            )));
        }
        (Some(kind), ..) => return unsupported(format!("addition_embed_type {kind:?}")),
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
        let add_embedding = match (config.addition_time_embed_dim, config.projection_class_embeddings_input_dim) {
            (Some(time_features), Some(input)) if config.has_text_time() => Some(TextTimeEmbedding {
                add_embedding: TimestepEmbedding::load(&mut w, "add_embedding", input, temb_channels)?,
                time_features,
            }),
            _ => None,
        };
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
            add_embedding,
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
        added: Option<&TextTimeConditioning>,
        samples: usize,
    ) -> Tensor<4> {
        let batch = sample.dims()[0];
        if samples >= batch {
            return self.forward(sample, timestep, encoder_hidden_states, added);
        }
        let calls = (0..batch).step_by(samples.max(1)).map(|first| {
            let n = samples.min(batch - first);
            self.forward(
                sample.clone().narrow(0, first, n),
                timestep,
                encoder_hidden_states.clone().narrow(0, first, n),
                added.map(|a| a.narrow(first, n)).as_ref(),
            )
        });
        Tensor::cat(calls.collect(), 0)
    }

    /// Whether the U-Net takes SDXL's [`TextTimeConditioning`] (`addition_embed_type: "text_time"`).
    pub fn needs_text_time(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// Predicts the noise (or v) in `sample` at `timestep`, conditioned on the text embeddings.
    ///
    /// # Shapes
    /// - sample: `[batch, in_channels, h, w]` (latents; 9 channels for inpainting: latents, mask, masked-image latents)
    /// - encoder_hidden_states: `[batch, text_tokens, cross_attention_dim]`
    /// - added: SDXL's conditioning, `batch` samples; required exactly when [`Self::needs_text_time`]
    /// - output: `[batch, out_channels, h, w]`
    ///
    /// # Panics
    /// When `added` is given or missing against [`Self::needs_text_time`] (the pipeline always matches it).
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: f32,
        encoder_hidden_states: Tensor<3>,
        added: Option<&TextTimeConditioning>,
    ) -> Tensor<4> {
        let batch = sample.dims()[0];
        let device = sample.device();
        let (flip, shift) = (self.flip_sin_to_cos, self.freq_shift as f32);
        let features = timestep_tensor(&vec![timestep; batch], self.time_features, flip, shift, &device);
        let mut temb = self.time_embedding.forward(features);
        match (&self.add_embedding, added) {
            (None, None) => {}
            (Some(embedding), Some(added)) => {
                // diffusers: `add_time_proj(time_ids.flatten())` reshaped to [batch, 6 * dim], after the
                // pooled text embedding.
                let ids: Vec<f32> = added.time_ids.iter().flatten().copied().collect();
                let d = embedding.time_features;
                let time = timestep_tensor(&ids, d, flip, shift, &device).reshape([batch, ids.len() / batch * d]);
                let input = Tensor::cat(vec![added.text_embeds.clone(), time], 1);
                temb = temb + embedding.add_embedding.forward(input);
            }
            (Some(_), None) => panic!("this U-Net (addition_embed_type \"text_time\") needs SDXL's conditioning"),
            (None, Some(_)) => panic!("this U-Net takes no added conditioning"),
        }
        let context = &encoder_hidden_states;
        // Every ResNet block takes SiLU(temb) (diffusers applies it in each block, to the same tensor).
        let temb = burn::tensor::activation::silu(temb);

        let mut x = super::conv2d(&self.conv_in, sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        x = self.mid_block.forward(x, &temb, context);
        for block in &self.up_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        super::conv2d(&self.conv_out, group_norm_silu(&self.conv_norm_out, x))
    }
}
