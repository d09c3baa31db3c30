//! diffusers' `AutoencoderKL`: the encoder (image to latent distribution, for img2img and inpainting),
//! the decoder (latents to image, decoded in row bands so no buffer outgrows a browser's limits) and the
//! key mapping of its weight files.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::attention::attention_heads;
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D, upsample_nearest};
use super::{Add, GroupStats, conv2d, conv2d_with, group_norm, group_norm_silu, linear};
use crate::config::AutoencoderKLConfig;
use crate::weights::{IntoTensorSource, LoadError, TensorLoader, TensorSource};

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
    pub fn load<S: TensorSource>(w: &mut TensorLoader<S>, p: &str, c: usize, groups: usize) -> Result<Self, LoadError> {
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
        let tokens = group_norm(&self.group_norm, x.clone()).reshape([b, c, h * w]).swap_dims(1, 2);
        let q = linear(&self.to_q, tokens.clone());
        let k = linear(&self.to_k, tokens.clone());
        let v = linear(&self.to_v, tokens);
        // One head: burn's op in query blocks (ours takes heads up to 160 wide), or what this device
        // measured faster for the shape.
        let out = attention_heads(q, k, v, 1, false);
        let out = linear(&self.to_out, out).swap_dims(1, 2).reshape([b, c, h, w]);
        out + x
    }
}

/// `UNetMidBlock2D` of the encoder and the decoder: ResNet, single-head attention (unless the config
/// leaves it out), ResNet, at the latent resolution.
#[derive(Module, Debug)]
struct VaeMidBlock {
    resnet_1: ResnetBlock2D,
    attention: Option<VaeAttention>,
    resnet_2: ResnetBlock2D,
}

impl VaeMidBlock {
    fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        c: usize,
        config: &AutoencoderKLConfig,
    ) -> Result<Self, LoadError> {
        let groups = config.norm_num_groups;
        Ok(Self {
            resnet_1: ResnetBlock2D::load(w, &format!("{prefix}.resnets.0"), c, c, None, groups, 1e-6)?,
            attention: if config.mid_block_add_attention {
                Some(VaeAttention::load(w, &format!("{prefix}.attentions.0"), c, groups)?)
            } else {
                None
            },
            resnet_2: ResnetBlock2D::load(w, &format!("{prefix}.resnets.1"), c, c, None, groups, 1e-6)?,
        })
    }

    /// # Shapes
    /// - x: `[1, channels, h, w]`, returned in the same shape
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnet_1.forward(x, None);
        if let Some(attention) = &self.attention {
            x = attention.forward(x);
        }
        self.resnet_2.forward(x, None)
    }
}

/// Splits `x` into horizontal bands of `rows` rows (the last one may be shorter).
fn split_rows(x: Tensor<4>, rows: usize) -> Vec<Tensor<4>> {
    let h = x.dims()[2];
    (0..h).step_by(rows.max(1)).map(|r| x.clone().narrow(2, r, rows.min(h - r))).collect()
}

/// One `DownEncoderBlock2D`: ResNet blocks, then (except the last block) a stride-2 convolution on the
/// input padded by one pixel at the right and bottom, as diffusers' `Downsample2D(padding=0)`.
#[derive(Module, Debug)]
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsample: Option<Downsample2D>,
}

/// The VAE encoder (`Encoder` + `quant_conv`): image to the latent distribution's mean and log-variance.
#[derive(Module, Debug)]
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: VaeMidBlock,
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
    pub fn load<S: IntoTensorSource>(
        config: &AutoencoderKLConfig,
        source: S,
        device: &Device,
    ) -> Result<Self, LoadError> {
        config.check()?;
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
                    let p = format!("encoder.down_blocks.{i}.resnets.{j}");
                    ResnetBlock2D::load(&mut w, &p, c, c_out, None, groups, 1e-6)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let downsample = if i + 1 < channels.len() {
                Some(Downsample2D::load(&mut w, &format!("encoder.down_blocks.{i}.downsamplers.0"), c_out, 0)?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock { resnets, downsample });
            c_in = c_out;
        }
        let c = c_in;
        let mid_block = VaeMidBlock::load(&mut w, "encoder.mid_block", c, config)?;
        let conv_norm_out = w.group_norm("encoder.conv_norm_out", groups, c, 1e-6)?;
        let moments = 2 * config.latent_channels;
        let conv_out = w.conv2d("encoder.conv_out", c, moments, 3, 1, 1)?;
        let quant_conv =
            if config.use_quant_conv { Some(w.conv2d("quant_conv", moments, moments, 1, 1, 0)?) } else { None };
        w.finish()?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
            quant_conv,
            latent_channels: config.latent_channels,
        })
    }

    /// Encodes with row bands of at most [`DEFAULT_BAND_BYTES`] (see [`Self::encode`]).
    ///
    /// # Shapes
    /// - image: `[batch, 3, h, w]` in [-1, 1]
    /// - output: mean and std `[batch, latent_channels, h / f, w / f]`
    pub fn forward(&self, image: Tensor<4>) -> LatentDistribution {
        self.encode(image, DEFAULT_BAND_BYTES)
    }

    /// Image rows per band so that no band activation exceeds `max_band_bytes`: a multiple of the
    /// downscale, so every stride-2 convolution sees whole row pairs.
    pub fn band_rows(&self, h: usize, w: usize, max_band_bytes: usize) -> usize {
        let f = 1 << self.down_blocks.iter().filter(|b| b.downsample.is_some()).count();
        let bytes = |rows: usize| {
            let (mut worst, mut scale) = (0, 1);
            for block in &self.down_blocks {
                for resnet in &block.resnets {
                    let [c_out, c_in, _, _] = resnet.conv1.weight.dims();
                    worst = worst.max(c_in.max(c_out) * (rows / scale + 2) * (w / scale + 2) * 4);
                }
                if block.downsample.is_some() {
                    scale *= 2;
                }
            }
            worst
        };
        (1..=h.div_ceil(f)).rev().map(|n| n * f).find(|&rows| bytes(rows) <= max_band_bytes).unwrap_or(f)
    }

    /// Encodes one image at a time; the full-resolution stages (everything before the mid block) run on
    /// row bands no larger than `max_band_bytes`, exactly as the decoder's (halo rows for convolutions,
    /// GroupNorm statistics over all bands), so a 512 px img2img source fits WebGPU's limits.
    pub fn encode(&self, image: Tensor<4>, max_band_bytes: usize) -> LatentDistribution {
        let [batch, _, h, w] = image.dims();
        let rows = self.band_rows(h, w, max_band_bytes);
        let parts: Vec<LatentDistribution> =
            (0..batch).map(|i| self.encode_one(image.clone().narrow(0, i, 1), rows)).collect();
        let (means, stds) = parts.into_iter().map(|d| (d.mean, d.std)).unzip();
        LatentDistribution { mean: Tensor::cat(means, 0), std: Tensor::cat(stds, 0) }
    }

    /// Encodes without bands (the reference the banded encode is tested against).
    pub fn encode_untiled(&self, image: Tensor<4>) -> LatentDistribution {
        let h = image.dims()[2];
        self.encode_one(image, h)
    }

    fn encode_one(&self, image: Tensor<4>, band_rows: usize) -> LatentDistribution {
        let mut bands = banded_conv(&self.conv_in, split_rows(image, band_rows));
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                bands = banded_resnet(resnet, bands);
            }
            if let Some(down) = &block.downsample {
                bands = banded_downsample(down, bands);
            }
        }
        let x = self.mid_block.forward(Tensor::cat(bands, 2));
        let mut x = conv2d(&self.conv_out, group_norm_silu(&self.conv_norm_out, x));
        if let Some(conv) = &self.quant_conv {
            x = conv2d(conv, x);
        }
        let mean = x.clone().narrow(1, 0, self.latent_channels);
        let logvar = x.narrow(1, self.latent_channels, self.latent_channels).clamp(-30.0, 20.0);
        LatentDistribution { mean, std: (logvar * 0.5).exp() }
    }
}

/// The encoder's stride-2 convolution over row bands (each an even number of rows). diffusers pads the
/// encoder's input at the bottom and right only (`Downsample2D(padding=0)`), so a band needs just the
/// first row of the band below it.
fn banded_downsample(down: &Downsample2D, bands: Vec<Tensor<4>>) -> Vec<Tensor<4>> {
    if bands.len() == 1 {
        return vec![down.forward(bands.into_iter().next().expect("one band"))];
    }
    debug_assert!(down.asymmetric_pad, "the VAE encoder's downsamplers have padding 0");
    let weight = down.conv.weight.val();
    let bias = down.conv.bias.as_ref().map(|b| b.val());
    let n = bands.len();
    (0..n)
        .map(|i| {
            let mut parts = vec![bands[i].clone()];
            if i + 1 < n {
                parts.push(bands[i + 1].clone().narrow(2, 0, 1));
            }
            let bottom = usize::from(i + 1 == n);
            conv2d_with(Tensor::cat(parts, 2), &weight, bias.as_ref(), 2, [0, 0, bottom, 1], Add::NONE)
        })
        .collect()
}

/// One `UpDecoderBlock2D`: ResNet blocks, then (except the last block) a 2x upsampler.
#[derive(Module, Debug)]
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsample: Option<Upsample2D>,
}

/// The VAE decoder (`post_quant_conv` + `Decoder`): latents to an image in [-1, 1].
///
/// The high-resolution stages dominate memory (at 512 px one activation is `[1, 256, 512, 512]` f32 =
/// 256 MiB, past WebGPU's 128 MiB binding limit), so [`VaeDecoder::decode`] runs everything after the
/// mid block on horizontal row bands: convolutions read one halo row from each neighbouring band, and
/// GroupNorm statistics are accumulated over all bands before any band is normalised. The result is
/// the untiled decode (up to float summation order): no seams, unlike overlapping tiles.
#[derive(Module, Debug)]
pub struct VaeDecoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_block: VaeMidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// Largest activation a band may hold by default: a quarter of WebGPU's guaranteed 128 MiB binding
/// size, leaving room for the convolution kernels' own temporaries.
pub const DEFAULT_BAND_BYTES: usize = 32 << 20;

impl VaeDecoder {
    /// Loads the decoder half of a VAE weights file (the encoder's tensors are left for the encoder).
    pub fn load<S: IntoTensorSource>(
        config: &AutoencoderKLConfig,
        source: S,
        device: &Device,
    ) -> Result<Self, LoadError> {
        config.check()?;
        let decoder_only = |name: &str| {
            (name.starts_with("decoder.") || name.starts_with("post_quant_conv.")).then(|| vae_key_map(name)).flatten()
        };
        let mut w = TensorLoader::new(source, decoder_only, device)?;
        let (groups, latent) = (config.norm_num_groups, config.latent_channels);
        let channels: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let post_quant_conv =
            if config.use_post_quant_conv { Some(w.conv2d("post_quant_conv", latent, latent, 1, 1, 0)?) } else { None };
        let c = channels[0];
        let conv_in = w.conv2d("decoder.conv_in", latent, c, 3, 1, 1)?;
        let mid_block = VaeMidBlock::load(&mut w, "decoder.mid_block", c, config)?;
        let mut up_blocks = Vec::new();
        let mut c_in = c;
        for (i, &c_out) in channels.iter().enumerate() {
            let resnets = (0..config.layers_per_block + 1)
                .map(|j| {
                    let p = format!("decoder.up_blocks.{i}.resnets.{j}");
                    ResnetBlock2D::load(&mut w, &p, if j == 0 { c_in } else { c_out }, c_out, None, groups, 1e-6)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let upsample = if i + 1 < channels.len() {
                Some(Upsample2D::load(&mut w, &format!("decoder.up_blocks.{i}.upsamplers.0"), c_out)?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsample });
            c_in = c_out;
        }
        let conv_norm_out = w.group_norm("decoder.conv_norm_out", groups, c_in, 1e-6)?;
        let conv_out = w.conv2d("decoder.conv_out", c_in, config.out_channels, 3, 1, 1)?;
        w.finish()?;
        Ok(Self { post_quant_conv, conv_in, mid_block, up_blocks, conv_norm_out, conv_out })
    }

    /// Latent rows per band so that no band activation exceeds `max_band_bytes` (at least one row).
    pub fn band_rows(&self, latent_h: usize, latent_w: usize, max_band_bytes: usize) -> usize {
        let bytes = |rows: usize| {
            let mut worst = 0;
            let mut scale = 1;
            for block in &self.up_blocks {
                for resnet in &block.resnets {
                    let [c_out, c_in, _, _] = resnet.conv1.weight.dims();
                    // The widest tensor of a ResNet, with the two halo rows its convolutions read.
                    worst = worst.max(c_in.max(c_out) * (rows * scale + 2) * latent_w * scale * 4);
                }
                if let Some(up) = &block.upsample {
                    scale *= 2;
                    let c = up.conv.weight.dims()[0];
                    worst = worst.max(c * (rows * scale + 2) * latent_w * scale * 4);
                }
            }
            worst
        };
        (1..=latent_h).rev().find(|&rows| bytes(rows) <= max_band_bytes).unwrap_or(1)
    }

    /// Decodes latents (already divided by the scaling factor) one image at a time, in row bands no
    /// larger than `max_band_bytes` ([`DEFAULT_BAND_BYTES`] in the app).
    ///
    /// # Shapes
    /// - latents: `[batch, latent_channels, h, w]`
    /// - output: `[batch, out_channels, h * f, w * f]`, in [-1, 1] up to the model's overshoot
    pub fn decode(&self, latents: Tensor<4>, max_band_bytes: usize) -> Tensor<4> {
        let [batch, _, h, w] = latents.dims();
        let rows = self.band_rows(h, w, max_band_bytes);
        let images = (0..batch).map(|i| self.decode_one(latents.clone().narrow(0, i, 1), rows)).collect();
        Tensor::cat(images, 0)
    }

    /// Decodes without banding (the reference the banded decode is tested against).
    pub fn decode_untiled(&self, latents: Tensor<4>) -> Tensor<4> {
        let h = latents.dims()[2];
        self.decode_one(latents, h)
    }

    fn decode_one(&self, z: Tensor<4>, band_rows: usize) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv2d(conv, z),
            None => z,
        };
        let x = self.mid_block.forward(conv2d(&self.conv_in, z));
        let mut bands = split_rows(x, band_rows);
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                bands = banded_resnet(resnet, bands);
            }
            if let Some(up) = &block.upsample {
                let doubled = bands
                    .into_iter()
                    .map(|b| {
                        let [_, _, bh, bw] = b.dims();
                        upsample_nearest(b, (2 * bh, 2 * bw))
                    })
                    .collect();
                bands = banded_conv(&up.conv, doubled);
            }
        }
        let bands = group_norm_silu_banded(&self.conv_norm_out, bands);
        Tensor::cat(banded_conv(&self.conv_out, bands), 2)
    }
}

/// A VAE ResNet block over row bands.
fn banded_resnet(resnet: &ResnetBlock2D, bands: Vec<Tensor<4>>) -> Vec<Tensor<4>> {
    let h = group_norm_silu_banded(&resnet.norm1, bands.clone());
    let h = banded_conv(&resnet.conv1, h);
    let h = group_norm_silu_banded(&resnet.norm2, h);
    let h = banded_conv(&resnet.conv2, h);
    bands
        .into_iter()
        .zip(h)
        .map(|(x, h)| match &resnet.conv_shortcut {
            Some(conv) => conv2d(conv, x) + h,
            None => x + h,
        })
        .collect()
}

/// A stride-1 convolution with "same" padding over row bands: each band is extended by the rows of its
/// neighbours that the kernel reaches, and zero-padded only at the image's own top and bottom.
fn banded_conv(conv: &Conv2d, bands: Vec<Tensor<4>>) -> Vec<Tensor<4>> {
    if bands.len() == 1 {
        return vec![conv2d(conv, bands.into_iter().next().expect("one band"))];
    }
    let [_, _, kh, kw] = conv.weight.dims();
    let (halo, pad_w) = (kh / 2, kw / 2);
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref().map(|b| b.val());
    let n = bands.len();
    (0..n)
        .map(|i| {
            let mut parts = Vec::with_capacity(3);
            if i > 0 {
                let above = &bands[i - 1];
                let rows = above.dims()[2];
                parts.push(above.clone().narrow(2, rows - halo, halo));
            }
            parts.push(bands[i].clone());
            if i + 1 < n {
                parts.push(bands[i + 1].clone().narrow(2, 0, halo));
            }
            let top = if i == 0 { halo } else { 0 };
            let bottom = if i + 1 == n { halo } else { 0 };
            conv2d_with(Tensor::cat(parts, 2), &weight, bias.as_ref(), 1, [top, pad_w, bottom, pad_w], Add::NONE)
        })
        .collect()
}

/// GroupNorm then SiLU over row bands, with the statistics of the whole image (see
/// [`super::group_norm`]); one band is the whole image, normalized as such.
fn group_norm_silu_banded(norm: &GroupNorm, bands: Vec<Tensor<4>>) -> Vec<Tensor<4>> {
    if let [image] = &bands[..] {
        return vec![group_norm_silu(norm, image.clone())];
    }
    let stats = GroupStats::new(norm.num_groups, &bands, norm.epsilon);
    bands.into_iter().map(|band| silu(stats.normalize(norm, band))).collect()
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
