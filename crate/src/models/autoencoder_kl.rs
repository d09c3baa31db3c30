//! diffusers' `AutoencoderKL`. So far: the encoder (image to latent distribution, for img2img and
//! inpainting) and the key mapping of its weight files; the decoder comes with the U-Net.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::config::AutoencoderKLConfig;
use crate::weights::{ByteSource, LoadError, TensorLoader};

/// Key mapping for VAE files: the Hub's SD 1.x repos store the mid-block attention as
/// `query`/`key`/`value`/`proj_attn`, diffusers 0.42 writes `to_q`/`to_k`/`to_v`/`to_out.0`.
pub fn vae_key_map(name: &str) -> Option<String> {
    let Some((head, tail)) = name.split_once(".attentions.") else { return Some(name.to_string()) };
    // tail = "<index>.<projection>.<weight|bias>"
    let mut parts = tail.splitn(3, '.');
    let (Some(index), Some(projection), Some(param)) = (parts.next(), parts.next(), parts.next()) else {
        return Some(name.to_string());
    };
    let projection = match projection {
        "query" => "to_q",
        "key" => "to_k",
        "value" => "to_v",
        "proj_attn" => "to_out.0",
        other => other,
    };
    Some(format!("{head}.attentions.{index}.{projection}.{param}"))
}

/// diffusers' `ResnetBlock2D` without a time embedding (the VAE's).
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    fn load<S: ByteSource>(
        w: &mut TensorLoader<S>,
        p: &str,
        c_in: usize,
        c_out: usize,
        groups: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            norm1: w.group_norm(&format!("{p}.norm1"), groups, c_in, 1e-6)?,
            conv1: w.conv2d(&format!("{p}.conv1"), c_in, c_out, 3, 1, 1)?,
            norm2: w.group_norm(&format!("{p}.norm2"), groups, c_out, 1e-6)?,
            conv2: w.conv2d(&format!("{p}.conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(w.conv2d(&format!("{p}.conv_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    /// # Shapes
    /// - x: `[batch, c_in, h, w]` -> `[batch, c_out, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// The VAE's single-head spatial self-attention (mid block), with its residual.
#[derive(Module, Debug)]
pub struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl VaeAttention {
    fn load<S: ByteSource>(w: &mut TensorLoader<S>, p: &str, c: usize, groups: usize) -> Result<Self, LoadError> {
        Ok(Self {
            group_norm: w.group_norm(&format!("{p}.group_norm"), groups, c, 1e-6)?,
            to_q: w.linear(&format!("{p}.to_q"), c, c, true)?,
            to_k: w.linear(&format!("{p}.to_k"), c, c, true)?,
            to_v: w.linear(&format!("{p}.to_v"), c, c, true)?,
            to_out: w.linear(&format!("{p}.to_out.0"), c, c, true)?,
        })
    }

    /// # Shapes
    /// - x: `[batch, channels, h, w]`, returned in the same shape
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = self.group_norm.forward(x.clone()).reshape([b, c, h * w]).swap_dims(1, 2);
        let heads = |t: Tensor<3>| t.reshape([b, 1, h * w, c]);
        let q = heads(self.to_q.forward(tokens.clone()));
        let k = heads(self.to_k.forward(tokens.clone()));
        let v = heads(self.to_v.forward(tokens));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default()).reshape([b, h * w, c]);
        let out = self.to_out.forward(out).swap_dims(1, 2).reshape([b, c, h, w]);
        out + x
    }
}

/// One `DownEncoderBlock2D`: ResNet blocks, then (except the last block) a stride-2 convolution on the
/// input padded by one pixel at the right and bottom, as diffusers' `Downsample2D(padding=0)`.
#[derive(Module, Debug)]
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsample: Option<Conv2d>,
}

/// The VAE encoder (`Encoder` + `quant_conv`): image to the latent distribution's mean and log-variance.
#[derive(Module, Debug)]
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_resnet_1: ResnetBlock2D,
    mid_attention: Option<VaeAttention>,
    mid_resnet_2: ResnetBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

/// The latent distribution the encoder outputs (diffusers' `DiagonalGaussianDistribution`).
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    /// `[batch, latent_channels, h / f, w / f]`
    pub mean: Tensor<4>,
    /// `exp(0.5 * clamp(logvar, -30, 20))`, same shape.
    pub std: Tensor<4>,
}

impl LatentDistribution {
    /// `mean + std * noise`; the caller draws `noise` (shape of `mean`) from the pipeline's generator.
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std.clone() * noise
    }
}

impl VaeEncoder {
    /// Loads the encoder half of a VAE weights file (the decoder's tensors are left for the decoder).
    pub fn load<S: ByteSource>(config: &AutoencoderKLConfig, source: S, device: &Device) -> Result<Self, LoadError> {
        let encoder_only = |name: &str| {
            (name.starts_with("encoder.") || name.starts_with("quant_conv.")).then(|| vae_key_map(name)).flatten()
        };
        let mut w = TensorLoader::new(source, encoder_only, device)?;
        let (groups, channels) = (config.norm_num_groups, &config.block_out_channels);
        let conv_in = w.conv2d("encoder.conv_in", config.in_channels, channels[0], 3, 1, 1)?;
        let mut down_blocks = Vec::new();
        let mut c_in = channels[0];
        for (i, &c_out) in channels.iter().enumerate() {
            let resnets = (0..config.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { c_in } else { c_out };
                    ResnetBlock2D::load(&mut w, &format!("encoder.down_blocks.{i}.resnets.{j}"), c, c_out, groups)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let downsample = if i + 1 < channels.len() {
                Some(w.conv2d(&format!("encoder.down_blocks.{i}.downsamplers.0.conv"), c_out, c_out, 3, 2, 0)?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock { resnets, downsample });
            c_in = c_out;
        }
        let c = c_in;
        let mid_resnet_1 = ResnetBlock2D::load(&mut w, "encoder.mid_block.resnets.0", c, c, groups)?;
        let mid_attention = if config.mid_block_add_attention {
            Some(VaeAttention::load(&mut w, "encoder.mid_block.attentions.0", c, groups)?)
        } else {
            None
        };
        let mid_resnet_2 = ResnetBlock2D::load(&mut w, "encoder.mid_block.resnets.1", c, c, groups)?;
        let conv_norm_out = w.group_norm("encoder.conv_norm_out", groups, c, 1e-6)?;
        let moments = 2 * config.latent_channels;
        let conv_out = w.conv2d("encoder.conv_out", c, moments, 3, 1, 1)?;
        let quant_conv =
            if config.use_quant_conv { Some(w.conv2d("quant_conv", moments, moments, 1, 1, 0)?) } else { None };
        w.finish()?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_resnet_1,
            mid_attention,
            mid_resnet_2,
            conv_norm_out,
            conv_out,
            quant_conv,
            latent_channels: config.latent_channels,
        })
    }

    /// # Shapes
    /// - image: `[batch, 3, h, w]` in [-1, 1]
    /// - output: mean and std `[batch, latent_channels, h / f, w / f]`
    pub fn forward(&self, image: Tensor<4>) -> LatentDistribution {
        let mut x = self.conv_in.forward(image);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            if let Some(conv) = &block.downsample {
                x = conv.forward(x.pad((0, 1, 0, 1), 0.0));
            }
        }
        x = self.mid_resnet_1.forward(x);
        if let Some(attention) = &self.mid_attention {
            x = attention.forward(x);
        }
        x = self.mid_resnet_2.forward(x);
        x = self.conv_out.forward(silu(self.conv_norm_out.forward(x)));
        if let Some(conv) = &self.quant_conv {
            x = conv.forward(x);
        }
        let mean = x.clone().narrow(1, 0, self.latent_channels);
        let logvar = x.narrow(1, self.latent_channels, self.latent_channels).clamp(-30.0, 20.0);
        LatentDistribution { mean, std: (logvar * 0.5).exp() }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::weights::SafetensorsReader;

    fn canonical_tensors(path: &str) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut reader = SafetensorsReader::new(std::fs::File::open(root.join(path)).unwrap()).unwrap();
        let names: Vec<String> = reader.header().tensors().map(|t| t.name.clone()).collect();
        names
            .into_iter()
            .map(|name| {
                let (info, bytes) = reader.read_bytes(&name).unwrap();
                (vae_key_map(&name).unwrap(), (info.shape, bytes))
            })
            .collect()
    }

    #[test]
    fn both_naming_schemes_give_the_same_tensors() {
        let new = canonical_tensors("tiny-sd/vae/diffusion_pytorch_model.fp16.safetensors");
        let legacy = canonical_tensors("tiny-sd-legacykeys/vae/diffusion_pytorch_model.fp16.safetensors");
        assert!(new.contains_key("encoder.mid_block.attentions.0.to_out.0.weight"));
        assert_eq!(new.len(), legacy.len());
        assert!(new == legacy, "the mapped legacy file must hold the same tensors under the same names");
    }

    #[test]
    fn only_attention_projections_are_renamed() {
        assert_eq!(
            vae_key_map("decoder.mid_block.attentions.0.query.weight").unwrap(),
            "decoder.mid_block.attentions.0.to_q.weight"
        );
        assert_eq!(
            vae_key_map("encoder.mid_block.attentions.0.proj_attn.bias").unwrap(),
            "encoder.mid_block.attentions.0.to_out.0.bias"
        );
        assert_eq!(
            vae_key_map("encoder.mid_block.attentions.0.group_norm.weight").unwrap(),
            "encoder.mid_block.attentions.0.group_norm.weight"
        );
        assert_eq!(
            vae_key_map("decoder.up_blocks.0.resnets.0.conv1.weight").unwrap(),
            "decoder.up_blocks.0.resnets.0.conv1.weight"
        );
    }
}
