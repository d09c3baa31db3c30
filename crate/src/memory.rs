//! What a generation asks of GPU memory, worked out from the model's configs before any work is done.
//!
//! One rule for every device: no GPU buffer may exceed [`MAX_BUFFER_BYTES`] (WebGPU's guaranteed
//! binding size, which is all a browser promises). The pipeline keeps its buffers under it by
//! - running the U-Net on as many samples per call as fit ([`MemoryPlan::unet_samples_per_call`]);
//! - splitting the GEGLU projection by tokens ([`crate::models::attention::FeedForward`]);
//! - attention in query blocks, the VAE in row bands (their own modules).
//!
//! What cannot be split that way (one sample's widest U-Net tensor, the decoded batch) is checked here,
//! and a request that would need more is refused up front, naming what to lower.

use crate::config::{AutoencoderKLConfig, UNet2DConditionConfig};
pub use crate::gpu::MAX_BUFFER_BYTES;
use crate::models::attention::MAX_SCORE_BYTES;
use crate::models::autoencoder_kl::DEFAULT_BAND_BYTES;

const MIB: f64 = 1024.0 * 1024.0;

/// The element type activations are computed in (weights and GroupNorm statistics aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

impl Precision {
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

/// The size of a generation, as far as memory is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub width: usize,
    pub height: usize,
    /// Images requested.
    pub batch: usize,
    /// Classifier-free guidance doubles the U-Net's batch.
    pub guidance: bool,
    /// img2img / inpainting: the VAE encoder runs too.
    pub encode: bool,
    pub precision: Precision,
}

/// One activation buffer of the generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
    pub what: String,
    pub bytes: u64,
}

impl Buffer {
    fn new(what: impl Into<String>, bytes: u64) -> Self {
        Self { what: what.into(), bytes }
    }
}

/// How a generation fits within [`MAX_BUFFER_BYTES`], and what it is estimated to hold at its peak.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// U-Net samples per call: the U-Net's batch (twice the images under guidance) runs in calls of at
    /// most this many samples. Exact: every sample is independent (GroupNorm is per sample).
    pub unet_samples_per_call: usize,
    /// The largest buffer the generation allocates, after every split.
    pub largest: Buffer,
    /// Estimated activations alive at the peak (weights not included).
    pub peak_activation_bytes: u64,
}

/// Why a workload cannot run within the buffer cap, and what to lower.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{width}x{height} x {batch} needs a {:.1} MiB GPU buffer ({}), over the {} MiB every buffer is kept to \
     (WebGPU's guaranteed limit): {advice}",
    .needed.bytes as f64 / MIB, .needed.what, MAX_BUFFER_BYTES >> 20
)]
pub struct TooLarge {
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    pub needed: Buffer,
    pub advice: String,
}

/// Latent resolution of each U-Net level: halved (rounding up, as a stride-2 convolution with padding
/// 1 does) below each level but the last.
fn level_sizes(lh: usize, lw: usize, levels: usize) -> Vec<(usize, usize)> {
    let mut sizes = vec![(lh, lw)];
    for _ in 1..levels {
        let (h, w) = *sizes.last().expect("one level");
        sizes.push((h.div_ceil(2), w.div_ceil(2)));
    }
    sizes
}

/// The U-Net's activation buffers for one sample, mirroring `UNet2DConditionModel::load`: (fixed, GEGLU)
/// where GEGLU buffers are split by tokens at run time and the rest scale with the samples per call.
/// GroupNorm inputs are counted in f32, which is how they are normalised on every device.
fn unet_buffers(c: &UNet2DConditionConfig, lh: usize, lw: usize, p: Precision) -> (Vec<Buffer>, Vec<Buffer>) {
    let e = p.bytes();
    let ch = &c.block_out_channels;
    let n = ch.len();
    let sizes = level_sizes(lh, lw, n);
    let tokens = |l: usize| (sizes[l].0 * sizes[l].1) as u64;
    let dims = |cs: usize, l: usize| format!("[{cs}, {}, {}]", sizes[l].0, sizes[l].1);
    let mut fixed = Vec::new();
    let mut geglu = Vec::new();
    let resnet = |fixed: &mut Vec<Buffer>, name: String, c_in: usize, l: usize| {
        // The GroupNorm of a ResNet's input, in f32: the widest tensor of the block.
        fixed.push(Buffer::new(format!("{name} input {} in f32", dims(c_in, l)), c_in as u64 * tokens(l) * 4));
    };
    let transformer = |fixed: &mut Vec<Buffer>, geglu: &mut Vec<Buffer>, name: String, cs: usize, l: usize| {
        let t = tokens(l);
        fixed.push(Buffer::new(format!("{name} input {} in f32", dims(cs, l)), cs as u64 * t * 4));
        if c.upcast_attention && p == Precision::F16 {
            fixed.push(Buffer::new(format!("{name} upcast queries [{t}, {cs}] in f32"), cs as u64 * t * 4));
        }
        // Both GEGLU buffers live only within one token piece (`FeedForward::forward`).
        geglu
            .push(Buffer::new(format!("{name} GEGLU output [{t}, {}] in {}", 4 * cs, p.name()), 4 * cs as u64 * t * e));
        geglu.push(Buffer::new(
            format!("{name} GEGLU projection [{t}, {}] in {}", 8 * cs, p.name()),
            8 * cs as u64 * t * e,
        ));
    };
    let has_attention = |kind: &str| kind.starts_with("CrossAttn");
    fixed.push(Buffer::new(format!("conv_in output {} in {}", dims(ch[0], 0), p.name()), ch[0] as u64 * tokens(0) * e));
    for (i, kind) in c.down_block_types.iter().enumerate() {
        let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
        resnet(&mut fixed, format!("down_blocks.{i}.resnets.0"), c_in, i);
        if c.layers_per_block.get(i) > 1 {
            resnet(&mut fixed, format!("down_blocks.{i}.resnets.1"), ch[i], i);
        }
        if has_attention(kind) {
            transformer(&mut fixed, &mut geglu, format!("down_blocks.{i}.attentions"), ch[i], i);
        }
    }
    resnet(&mut fixed, "mid_block.resnets".into(), ch[n - 1], n - 1);
    transformer(&mut fixed, &mut geglu, "mid_block.attentions".into(), ch[n - 1], n - 1);
    for (i, kind) in c.up_block_types.iter().enumerate() {
        let level = n - 1 - i;
        let c_in = ch[level.saturating_sub(1)];
        let c_prev = if i == 0 { ch[n - 1] } else { ch[level + 1] };
        let c_out = ch[level];
        let layers = c.layers_per_block.get(level) + 1;
        for j in 0..layers {
            let skip = if j + 1 == layers { c_in } else { c_out };
            let input = if j == 0 { c_prev } else { c_out };
            resnet(&mut fixed, format!("up_blocks.{i}.resnets.{j}"), input + skip, level);
        }
        if has_attention(kind) {
            transformer(&mut fixed, &mut geglu, format!("up_blocks.{i}.attentions"), c_out, level);
        }
        if i + 1 < n {
            let l = level - 1;
            fixed.push(Buffer::new(
                format!("up_blocks.{i}.upsamplers output {} in {}", dims(c_out, l), p.name()),
                c_out as u64 * tokens(l) * e,
            ));
        }
    }
    fixed.push(Buffer::new(format!("conv_norm_out input {} in f32", dims(ch[0], 0)), ch[0] as u64 * tokens(0) * 4));
    (fixed, geglu)
}

/// The skip connections the down path keeps for the up path, for one sample, in bytes.
fn unet_skip_bytes(c: &UNet2DConditionConfig, lh: usize, lw: usize, p: Precision) -> u64 {
    let ch = &c.block_out_channels;
    let sizes = level_sizes(lh, lw, ch.len());
    let tokens = |l: usize| (sizes[l].0 * sizes[l].1) as u64;
    let mut total = ch[0] as u64 * tokens(0);
    for (i, &cs) in ch.iter().enumerate() {
        total += c.layers_per_block.get(i) as u64 * cs as u64 * tokens(i);
        if i + 1 < ch.len() {
            total += cs as u64 * tokens(i + 1);
        }
    }
    total * p.bytes()
}

/// The VAE's buffers that bands do not split: the mid block at latent size (its GroupNorm in f32, its
/// attention's queries), one band, and the decoded images.
fn vae_buffers(v: &AutoencoderKLConfig, w: &Workload) -> Vec<Buffer> {
    let f = v.scale_factor();
    let (lh, lw) = (w.height / f, w.width / f);
    let c = *v.block_out_channels.last().expect("validated: at least one block") as u64;
    let t = (lh * lw) as u64;
    let mut list = vec![
        Buffer::new(format!("VAE mid block input [{c}, {lh}, {lw}] in f32"), c * t * 4),
        Buffer::new("a VAE decoder row band", DEFAULT_BAND_BYTES as u64),
        Buffer::new(
            format!("decoded images [{}, 3, {}, {}] in f32", w.batch, w.height, w.width),
            (w.batch * 3 * w.height * w.width) as u64 * 4,
        ),
    ];
    if w.encode {
        list.push(Buffer::new(
            format!("init image [3, {}, {}] in f32", w.height, w.width),
            (3 * w.height * w.width) as u64 * 4,
        ));
    }
    list
}

fn largest(list: &[Buffer]) -> Buffer {
    list.iter().max_by_key(|b| b.bytes).cloned().unwrap_or_else(|| Buffer::new("nothing", 0))
}

/// The largest square side (a multiple of 64) whose `per_pixel_bytes`-scaled buffer fits the cap.
fn largest_side(fits: impl Fn(usize) -> bool) -> Option<usize> {
    (1..=64usize).rev().map(|k| k * 64).find(|&side| fits(side))
}

/// Plans `w` for this U-Net and VAE: how many U-Net samples per call, the largest buffer and the
/// estimated peak; or why it cannot fit and what to lower.
pub fn plan(unet: &UNet2DConditionConfig, vae: &AutoencoderKLConfig, w: &Workload) -> Result<MemoryPlan, TooLarge> {
    let cap = MAX_BUFFER_BYTES;
    let f = vae.scale_factor();
    let (lh, lw) = (w.height / f, w.width / f);
    let (fixed, geglu) = unet_buffers(unet, lh, lw, w.precision);
    let per_sample = largest(&fixed);
    let vae = vae_buffers(vae, w);
    let too_large =
        |needed: Buffer, advice: String| TooLarge { width: w.width, height: w.height, batch: w.batch, needed, advice };
    let size_advice = |fits: &dyn Fn(usize) -> bool| match largest_side(fits) {
        Some(side) => format!("lower the size (at most {side}x{side} fits)"),
        None => "this model cannot run within it".to_string(),
    };
    if per_sample.bytes > cap {
        let fits = |side: usize| {
            let (fixed, _) = unet_buffers(unet, side / f, side / f, w.precision);
            largest(&fixed).bytes <= cap
        };
        return Err(too_large(per_sample, size_advice(&fits)));
    }
    let vae_largest = largest(&vae);
    if vae_largest.bytes > cap {
        let one_image = (3 * w.height * w.width) as u64 * 4;
        let advice = if vae_largest.what.starts_with("decoded") && one_image <= cap {
            format!("lower the batch to at most {}", cap / one_image)
        } else {
            let c = vae_largest.bytes / (w.height * w.width) as u64;
            size_advice(&|side: usize| c * (side * side) as u64 <= cap)
        };
        return Err(too_large(vae_largest, advice));
    }
    let samples = w.batch * if w.guidance { 2 } else { 1 };
    let per_call = ((cap / per_sample.bytes.max(1)) as usize).clamp(1, samples);
    let calls = samples.div_ceil(per_call);
    let per_call = samples.div_ceil(calls); // even calls: 6 samples at most 4 a call run as 3 + 3
    let s = per_call as u64;
    let geglu_largest = largest(&geglu);
    // The GEGLU projection of a whole call, split by tokens into pieces of at most the cap.
    let geglu_piece = (geglu_largest.bytes * s).min(cap);
    let call = Buffer::new(format!("{} (x{per_call} samples per call)", per_sample.what), per_sample.bytes * s);
    let score_block = MAX_SCORE_BYTES as u64;
    let mut candidates = vec![call.clone(), Buffer::new(format!("{} (a piece)", geglu_largest.what), geglu_piece)];
    candidates.extend(vae.iter().cloned());
    let largest_buffer = largest(&candidates);
    // Alive at the U-Net's widest point: the skips, the block's input, its GroupNorm copy and output,
    // a GEGLU piece and an attention score block.
    let unet_peak = s * unet_skip_bytes(unet, lh, lw, w.precision) + 3 * call.bytes + geglu_piece + score_block;
    let vae_peak = vae.iter().map(|b| b.bytes).sum::<u64>() + 2 * vae_largest.bytes;
    Ok(MemoryPlan {
        unet_samples_per_call: per_call,
        largest: largest_buffer,
        peak_activation_bytes: unet_peak.max(vae_peak),
    })
}

/// A weights file as the device will hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsFile {
    /// Bytes of the file (its small JSON header included).
    pub bytes: u64,
    /// The file stores f16 values (`*.fp16.safetensors`), else f32.
    pub f16: bool,
}

/// Whether a browser engine on a device computing in `precision` takes a model with these weights files:
/// without `shader-f16` the weights are held in f32, and past [`crate::limits::MAX_F32_WEIGHT_BYTES`]
/// that is refused (the message gives the sizes and what to use instead).
pub fn check_browser_weights(files: &[WeightsFile], precision: Precision) -> Result<(), String> {
    let as_f32: u64 = files.iter().map(|f| if f.f16 { f.bytes * 2 } else { f.bytes }).sum();
    let as_files: u64 = files.iter().map(|f| f.bytes).sum();
    let limit = crate::limits::MAX_F32_WEIGHT_BYTES;
    if precision == Precision::F32 && as_f32 > limit {
        let gb = |b: u64| b as f64 / 1e9;
        return Err(format!(
            "this model's weights are {:.1} GB as f32 ({:.1} GB downloaded), more than the {:.1} GB this app holds \
             in f32 on a GPU, and this GPU has no shader-f16 to hold them in f16: use a browser and GPU with \
             WebGPU's shader-f16 (Chrome or Edge 120+ on most GPUs), or a smaller model",
            gb(as_f32),
            gb(as_files),
            gb(limit)
        ));
    }
    Ok(())
}

/// What a generation is estimated to hold in GPU memory at its peak: the weights as the device holds
/// them (converted to its precision on load) and [`MemoryPlan::peak_activation_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weight_bytes: u64,
    pub activation_bytes: u64,
}

impl MemoryEstimate {
    pub fn new(files: &[WeightsFile], plan: &MemoryPlan, precision: Precision) -> Self {
        let weight_bytes = files.iter().map(|f| f.bytes / if f.f16 { 2 } else { 4 } * precision.bytes()).sum::<u64>();
        Self { weight_bytes, activation_bytes: plan.peak_activation_bytes }
    }

    pub fn total(&self) -> u64 {
        self.weight_bytes + self.activation_bytes
    }

    /// Compared with the memory the browser reports (`navigator.deviceMemory`: GiB rounded down to a
    /// power of two and clamped, so it may be less than the machine has but, below 8 GiB, never even
    /// half as much): a warning naming what to lower when the estimate exceeds it, else `None`. Not a
    /// refusal: WebGPU states no GPU memory size, and a discrete GPU's memory is not counted in it;
    /// where the memory truly runs out the generation ends with `gpu-oom`.
    pub fn advice(
        &self,
        device_memory_bytes: Option<u64>,
        width: usize,
        height: usize,
        batch: usize,
    ) -> Option<String> {
        let reported = device_memory_bytes?;
        if reported >= REPORTED_MEMORY_CAP_BYTES || self.total() <= reported {
            return None;
        }
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let lower = if self.weight_bytes > reported {
            "the model's weights alone exceed it: use its fp16 weights on a GPU with shader-f16, or a smaller model"
                .to_string()
        } else if batch > 1 {
            format!("lower the batch (now {batch}) or the size ({width}x{height})")
        } else {
            format!("lower the size ({width}x{height})")
        };
        Some(format!(
            "this generation is estimated to need {:.1} GiB of GPU memory ({:.1} GiB of weights, {:.1} GiB of \
             activations at its peak) and this device reports {:.1} GiB: it may fail or stall the browser; {lower}",
            gib(self.total()),
            gib(self.weight_bytes),
            gib(self.activation_bytes),
            gib(reported)
        ))
    }
}

/// From this `navigator.deviceMemory` up the figure may be clamped (the spec's example clamps at 8 GiB;
/// Debian's Chromium here reports 16), so it says nothing of an upper bound: no warning.
pub const REPORTED_MEMORY_CAP_BYTES: u64 = 8 << 30;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn sd15() -> (UNet2DConditionConfig, AutoencoderKLConfig) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/hub-configs/sd15");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
        (parse("unet", &read("unet/config.json")).unwrap(), parse("vae", &read("vae/config.json")).unwrap())
    }

    fn work(side: usize, batch: usize, precision: Precision) -> Workload {
        Workload { width: side, height: side, batch, guidance: true, encode: false, precision }
    }

    #[test]
    fn sd15_at_512_px_runs_in_one_call_and_its_widest_tensor_is_the_last_up_block_input() {
        let (unet, vae) = sd15();
        let plan = plan(&unet, &vae, &work(512, 1, Precision::F32)).unwrap();
        assert_eq!(plan.unet_samples_per_call, 2);
        // [2, 960, 64, 64] in f32 = 30 MiB; the GEGLU projection [4096, 2560] x 2 = 80 MiB.
        assert_eq!(plan.largest.bytes, 2 * 4096 * 2560 * 4, "{:?}", plan.largest);
        assert!(plan.largest.what.contains("GEGLU"), "{:?}", plan.largest);
    }

    #[test]
    fn every_size_and_batch_the_form_allows_up_to_1024_px_stays_under_the_cap() {
        let (unet, vae) = sd15();
        for side in [512, 768, 1024] {
            for batch in 1..=4 {
                for precision in [Precision::F32, Precision::F16] {
                    let plan = plan(&unet, &vae, &work(side, batch, precision)).unwrap();
                    assert!(plan.largest.bytes <= MAX_BUFFER_BYTES, "{side} x {batch} {precision:?}: {plan:?}");
                    assert!((1..=2 * batch).contains(&plan.unet_samples_per_call), "{side} x {batch}: {plan:?}");
                }
            }
        }
        // 1024 px: one sample's last up block input is [960, 128, 128] in f32 = 60 MiB: 2 per call.
        assert_eq!(plan(&unet, &vae, &work(1024, 4, Precision::F32)).unwrap().unet_samples_per_call, 2);
    }

    /// SDXL base's U-Net (3 levels to 1280 channels, transformer depths 1, 2, 10) and VAE at its 1024 px
    /// under guidance: every buffer within the cap in f32 and f16 (the last up block's input is [960, 128,
    /// 128] in f32 = 60 MiB a sample, so 2 samples a call; the GEGLU projections run in token pieces).
    #[test]
    fn sdxl_at_1024_px_with_guidance_stays_under_the_cap() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/hub-configs/sdxl-base");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
        let unet: UNet2DConditionConfig = parse("unet", &read("unet/config.json")).unwrap();
        let vae: AutoencoderKLConfig = parse("vae", &read("vae/config.json")).unwrap();
        for precision in [Precision::F32, Precision::F16] {
            let plan = plan(&unet, &vae, &work(1024, 1, precision)).unwrap();
            eprintln!("SDXL 1024 px, guidance, {precision:?}: {plan:?}");
            assert!(plan.largest.bytes <= MAX_BUFFER_BYTES, "{plan:?}");
            assert_eq!(plan.unet_samples_per_call, 2, "{plan:?}");
        }
    }

    /// SDXL's fp16 files (CLIP-L 246 MB, OpenCLIP-bigG 1.39 GB, U-Net 5.14 GB, VAE 167 MB) are refused on
    /// an f32 device and taken on an f16 one; SD 1.5's fp32 files (4.3 GB) are taken on both.
    #[test]
    fn sdxl_needs_shader_f16_in_the_browser() {
        let f16 = |bytes: u64| WeightsFile { bytes, f16: true };
        let sdxl = [f16(246_144_152), f16(1_389_382_176), f16(5_135_149_760), f16(167_335_342)];
        let err = check_browser_weights(&sdxl, Precision::F32).unwrap_err();
        assert!(err.contains("13.9 GB as f32 (6.9 GB downloaded)") && err.contains("shader-f16"), "{err}");
        assert_eq!(check_browser_weights(&sdxl, Precision::F16), Ok(()));
        let f32 = |bytes: u64| WeightsFile { bytes, f16: false };
        let sd15 = [f32(492_265_168), f32(3_438_167_536), f32(334_643_268)];
        assert_eq!(check_browser_weights(&sd15, Precision::F32), Ok(()));
    }

    #[test]
    fn a_size_whose_single_sample_exceeds_the_cap_is_refused_naming_what_fits() {
        let (unet, vae) = sd15();
        let err = plan(&unet, &vae, &work(2048, 1, Precision::F16)).unwrap_err();
        assert!(err.needed.what.contains("up_blocks.3.resnets.0 input [960, 256, 256] in f32"), "{err}");
        assert_eq!(err.needed.bytes, 960 * 256 * 256 * 4);
        let text = err.to_string();
        assert!(text.contains("at most 1472x1472 fits"), "{text}");
        assert!(plan(&unet, &vae, &work(1472, 1, Precision::F32)).is_ok());
        assert!(plan(&unet, &vae, &work(1536, 1, Precision::F32)).is_err());
    }

    #[test]
    fn the_estimate_counts_weights_at_the_device_precision_and_warns_only_below_the_reported_cap() {
        let (unet, vae) = sd15();
        // SD 1.5's fp16 files: text encoder 246 MB, U-Net 1.72 GB, VAE 167 MB.
        let files = [1_719_125_304u64, 246_144_152, 167_335_342].map(|bytes| WeightsFile { bytes, f16: true });
        let w = work(512, 1, Precision::F32);
        let p = plan(&unet, &vae, &w).unwrap();
        let on_f32 = MemoryEstimate::new(&files, &p, Precision::F32);
        let on_f16 = MemoryEstimate::new(&files, &p, Precision::F16);
        assert_eq!(on_f32.weight_bytes, 2 * on_f16.weight_bytes);
        assert!((4.2e9..4.3e9).contains(&(on_f32.weight_bytes as f64)), "{on_f32:?}");
        assert!(on_f32.activation_bytes > 100 << 20 && on_f32.activation_bytes < 1 << 30, "{on_f32:?}");
        // 8 GiB reported may be any amount above: no warning; 4 GiB is less than SD 1.5 in f32.
        assert_eq!(on_f32.advice(Some(8 << 30), 512, 512, 1), None);
        assert_eq!(on_f32.advice(None, 512, 512, 1), None);
        let advice = on_f32.advice(Some(4 << 30), 512, 512, 1).unwrap();
        assert!(advice.contains("need 4.2 GiB") && advice.contains("lower the size (512x512)"), "{advice}");
        let advice = on_f32.advice(Some(2 << 30), 512, 512, 1).unwrap();
        assert!(advice.contains("weights alone exceed it"), "{advice}");
        assert_eq!(on_f16.advice(Some(4 << 30), 512, 512, 1), None);
        // In f16 at 1024 px, batch 4, the activations push it over 2 GiB: lower the batch.
        let big = work(1024, 4, Precision::F16);
        let e = MemoryEstimate::new(&files, &plan(&unet, &vae, &big).unwrap(), Precision::F16);
        let advice = e.advice(Some(2 << 30), 1024, 1024, 4).unwrap();
        assert!(advice.contains("lower the batch (now 4)"), "{advice}");
    }

    #[test]
    fn a_decoded_batch_over_the_cap_asks_for_a_smaller_batch() {
        let (unet, vae) = sd15();
        // 1408 px: the U-Net fits (960 x 176 x 176 x 4 = 113 MiB); 8 decoded images are 181 MiB.
        let err = plan(&unet, &vae, &work(1408, 8, Precision::F32)).unwrap_err();
        assert!(err.to_string().contains("lower the batch to at most 5"), "{err}");
    }
}
