//! The configs of a diffusers model folder, read from the model's own JSON files (never hard-coded per
//! SD version). Unknown fields are ignored; a missing required field is an error naming the file and
//! the field. The scheduler config is [`crate::schedulers::SchedulerConfig`], the text encoder's
//! [`crate::models::clip::ClipTextConfig`], the tokenizer's is read by [`crate::tokenizer`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A config file that could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file, relative to the model folder (e.g. `unet/config.json`).
    pub file: String,
    /// What is wrong (serde names the missing or mistyped field).
    pub message: String,
}

impl ConfigError {
    /// An error of `file` (relative to the model folder).
    pub fn new(file: &str, message: impl Into<String>) -> Self {
        Self { file: file.to_string(), message: message.into() }
    }
}

/// A broken config is a broken model: the worker's `model` error.
impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        crate::Error::Model(e.to_string())
    }
}

// Bounds of the config fields, the one source for every check below (and the request's image size).
// Each is generous for every real SD 1.x, 2.x and SDXL model, yet refuses a hostile or broken config
// before anything is built from it: models are built layer by layer from these numbers, so a layer
// count of 1e7 builds 1e7 layers and a timestep count of 4e9 fills a 16 GB table.

/// Largest image side in pixels: what a request may ask for, and the default size a model may imply
/// (`sample_size` x the VAE's scale factor; SDXL's is 1024).
pub const MAX_IMAGE_SIDE: usize = 4096;
/// Widest feature dimension (block channels, text hidden size, cross-attention width): SDXL's U-Net and
/// OpenCLIP-bigG are 1280 wide, SDXL's cross-attention 2048.
pub const MAX_WIDTH: usize = 8192;
/// Widest MLP (`intermediate_size`): OpenCLIP-bigG's is 5120, four times its width.
pub const MAX_MLP_WIDTH: usize = 4 * MAX_WIDTH;
/// Resolution levels (`block_out_channels` entries) of a U-Net or VAE: SD has 4, SDXL's U-Net 3; each
/// halves the latent (the VAE's 8 would downscale 128x).
pub const MAX_BLOCKS: usize = 8;
/// ResNet layers per block: SD and SDXL use 2.
pub const MAX_LAYERS_PER_BLOCK: usize = 16;
/// Transformer blocks per attention layer: SDXL's deepest has 10.
pub const MAX_TRANSFORMER_LAYERS: usize = 64;
/// Attention heads: 8 (SD 1.x), 20 (SD 2.x, SDXL, OpenCLIP-bigG); the heads must divide the width too.
pub const MAX_HEADS: usize = 1024;
/// Text encoder layers: CLIP-L has 12, OpenCLIP-H 24 (23 used), OpenCLIP-bigG 32.
pub const MAX_TEXT_LAYERS: usize = 128;
/// Token positions of the text encoder, and the tokenizer's longest `model_max_length`: CLIP's is 77.
pub const MAX_POSITIONS: usize = 4096;
/// Tokens in the text encoder's vocabulary: CLIP's 49408.
pub const MAX_VOCAB: usize = 1 << 20;
/// Latent channels (and U-Net input channels): SD's VAE has 4 (9 U-Net inputs for inpainting), SD3's 16.
pub const MAX_LATENT_CHANNELS: usize = 64;
/// Training timesteps of a scheduler: every SD model has 1000; the scheduler keeps f32 tables this long.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;
/// The VAE's `scaling_factor` range: real VAEs use 0.13 (SDXL) to 1.5 (SD3); near 0 the latents are
/// divided into infinities.
pub const SCALING_FACTOR_RANGE: std::ops::RangeInclusive<f64> = 1e-3..=1e3;
/// Normalisation epsilons (`norm_eps`, `layer_norm_eps`): real models use 1e-5 or 1e-6.
pub const EPS_RANGE: std::ops::RangeInclusive<f64> = 1e-12..=1.0;

/// `value` of `field` within `min..=max`, else an error of `file` naming both.
pub(crate) fn in_range(file: &str, field: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(file, format!("{field} {value} is out of range (expected {min} to {max})")))
    }
}

/// A finite `value` of `field` within `range`, else an error of `file` naming both.
pub(crate) fn in_range_f64(
    file: &str,
    field: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<(), ConfigError> {
    if value.is_finite() && range.contains(&value) {
        Ok(())
    } else {
        let (min, max) = (range.start(), range.end());
        // Tiny and huge values in exponent form (`1e-300`, not 300 digits).
        let value =
            if value != 0.0 && !(1e-4..1e6).contains(&value.abs()) { format!("{value:e}") } else { value.to_string() };
        Err(ConfigError::new(file, format!("{field} {value} is out of range (expected {min:e} to {max:e})")))
    }
}

/// Parses `text` as the config `file`, read as diffusers' `from_config` reads it (see [`as_diffusers_reads`]).
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, ConfigError> {
    let err = |e: serde_json::Error| ConfigError { file: file.to_string(), message: e.to_string() };
    serde_json::from_value(as_diffusers_reads(serde_json::from_str(text).map_err(err)?)).map_err(err)
}

/// Keys whose `null` is a value rather than "not set": diffusers builds no mid block for
/// `"mid_block_type": null`, where a missing key means the default cross-attention mid block.
const NULL_IS_A_VALUE: &[&str] = &["mid_block_type"];

/// A config object as diffusers and transformers read it: a `null` field means "not set" (the class
/// default; the Hub's configs written by diffusers 0.2x say `"upcast_attention": null`), and the keys
/// listed in `_use_default_values` (configs dumped from memory) are dropped. Anything but an object is
/// returned as it is, for serde to reject with a typed message.
pub fn as_diffusers_reads(value: Value) -> Value {
    let Value::Object(mut fields) = value else { return value };
    if let Some(Value::Array(defaults)) = fields.remove("_use_default_values") {
        for key in defaults.iter().filter_map(Value::as_str) {
            fields.remove(key);
        }
    }
    fields.retain(|key, value| !value.is_null() || NULL_IS_A_VALUE.contains(&key.as_str()));
    Value::Object(fields)
}

/// `model_index.json`: the pipeline class and its components.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIndex {
    /// The pipeline class (`StableDiffusionPipeline`, `StableDiffusionInpaintPipeline`, ...).
    pub class_name: String,
    /// Component name -> (library, class); `None` for components the model leaves out (safety checker).
    pub components: BTreeMap<String, Option<(String, String)>>,
    /// SDXL: an empty negative prompt is zeros rather than the empty prompt's embeddings (diffusers'
    /// default for SDXL pipelines: true).
    pub force_zeros_for_empty_prompt: Option<bool>,
    /// SDXL refiner: `time_ids` carry an aesthetic score instead of the target size.
    pub requires_aesthetics_score: Option<bool>,
}

impl<'de> Deserialize<'de> for ModelIndex {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, Value>::deserialize(deserializer)?;
        let class_name = map
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| serde::de::Error::missing_field("_class_name"))?
            .to_string();
        // Components are the `[library, class]` pairs; other keys are pipeline options.
        let components = map
            .iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .filter_map(|(k, v)| {
                let pair = v.as_array().filter(|a| a.len() == 2)?;
                let entry = match (pair[0].as_str(), pair[1].as_str()) {
                    (Some(lib), Some(class)) => Some((lib.to_string(), class.to_string())),
                    _ => None,
                };
                Some((k.clone(), entry))
            })
            .collect();
        let flag = |key: &str| map.get(key).and_then(Value::as_bool);
        Ok(Self {
            class_name,
            components,
            force_zeros_for_empty_prompt: flag("force_zeros_for_empty_prompt"),
            requires_aesthetics_score: flag("requires_aesthetics_score"),
        })
    }
}

/// An integer or one per block (`attention_head_dim: 8` or `[5, 10, 20, 20]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    All(usize),
    /// One value per down block.
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for block `i` (the last one when the list is shorter).
    pub fn get(&self, i: usize) -> usize {
        match self {
            Self::All(v) => *v,
            Self::Each(v) => v.get(i).or(v.last()).copied().unwrap_or(0),
        }
    }

    /// Checks `field` of `file` for `blocks` blocks: one value per block when it is a list (as diffusers
    /// requires), each within `min..=max`.
    fn check(&self, file: &str, field: &str, blocks: usize, min: usize, max: usize) -> Result<(), ConfigError> {
        match self {
            Self::All(v) => in_range(file, field, *v, min, max),
            Self::Each(list) if list.len() != blocks => Err(ConfigError::new(
                file,
                format!("{field} has {} entries for {blocks} blocks (one per block expected)", list.len()),
            )),
            Self::Each(list) => {
                list.iter().enumerate().try_for_each(|(i, &v)| in_range(file, &format!("{field}[{i}]"), v, min, max))
            }
        }
    }
}

/// diffusers' `UNet2DConditionModel` config (`unet/config.json`), the fields SD 1.x/2.x use plus the
/// ones SDXL adds (read now so a model that needs them is refused clearly, not misread).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UNet2DConditionConfig {
    /// Latent size the model was trained at (64 for 512 px SD 1.x).
    pub sample_size: usize,
    /// 4, or 9 for inpainting models.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Down block kinds, e.g. `CrossAttnDownBlock2D`, `DownBlock2D`.
    pub down_block_types: Vec<String>,
    /// Up block kinds.
    pub up_block_types: Vec<String>,
    /// Mid block kind (`UNetMidBlock2DCrossAttn`).
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    /// Channels per block.
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per down block (up blocks have one more).
    pub layers_per_block: PerBlock,
    /// Attention heads per block, despite the name (diffusers keeps the old naming): 8 for SD 1.x, `[5, 10, 20,
    /// 20]` for SD 2.x, whose heads are 64 wide.
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: PerBlock,
    /// Heads, when the config gives them explicitly (overrides `attention_head_dim`).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Width of the text embeddings (768 SD 1.x, 1024 SD 2.x).
    pub cross_attention_dim: usize,
    /// Transformer blocks per attention layer (SDXL uses more than 1).
    #[serde(default = "default_one")]
    pub transformer_layers_per_block: PerBlock,
    /// `proj_in`/`proj_out` as linear layers (SD 2.x) instead of 1x1 convolutions.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Compute attention scores in f32 (SD 2.1).
    #[serde(default)]
    pub upcast_attention: bool,
    /// Timestep embedding: cosine first.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// Timestep embedding frequency shift.
    #[serde(default)]
    pub freq_shift: f64,
    /// Groups of every GroupNorm.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Padding of the downsampling convolutions.
    #[serde(default = "default_one_usize")]
    pub downsample_padding: usize,
    /// Activation (`silu`).
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Extra conditioning (SDXL: `text_time`); none for SD 1.x/2.x.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// SDXL: width of the sinusoidal features of each of the six size numbers (`time_ids`).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// SDXL: input width of `add_embedding`, the pooled text embedding plus the six `time_ids` features.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Class conditioning; none for SD 1.x/2.x.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Guidance-embedding width of LCM-distilled U-Nets; none for SD 1.x/2.x.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// How the time embedding enters the ResNets (`default`: added; `scale_shift`: FiLM).
    #[serde(default = "default_default")]
    pub resnet_time_scale_shift: String,
    /// Whether the input is mapped to [-1, 1] first (`2 x - 1`).
    #[serde(default)]
    pub center_input_sample: bool,
    /// Kernel of `conv_in`.
    #[serde(default = "default_three")]
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out`.
    #[serde(default = "default_three")]
    pub conv_out_kernel: usize,
    /// Two text encoders attended separately (Versatile Diffusion).
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// `positional` (sinusoidal) or `fourier`.
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    /// Output scale of the mid block's ResNets.
    #[serde(default = "default_one_f64")]
    pub mid_block_scale_factor: f64,
    /// Projection of the text embeddings before cross-attention (none for SD).
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// `default` attention (gated attention is GLIGEN's).
    #[serde(default = "default_default")]
    pub attention_type: String,
}

/// diffusers' `AutoencoderKL` config (`vae/config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels.
    #[serde(default = "default_three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "default_three")]
    pub out_channels: usize,
    /// Latent channels (4).
    #[serde(default = "default_four")]
    pub latent_channels: usize,
    /// Channels per block; the VAE scale factor is 2^(blocks - 1).
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per block.
    #[serde(default = "default_one_usize")]
    pub layers_per_block: usize,
    /// Groups of every GroupNorm.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding and divided before decoding.
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    /// Subtracted before scaling (SD3), none for SD 1.x/2.x.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Whether the mid block has attention.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    /// Whether `quant_conv` exists.
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Trained image size.
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// The VAE overflows in f16 and must run in f32 (SDXL's; the "fp16-fix" VAE says false). Only the
    /// SDXL pipelines read it, as diffusers'.
    #[serde(default = "default_true")]
    pub force_upcast: bool,
}

impl UNet2DConditionConfig {
    /// The file this config is read from.
    pub const FILE: &'static str = "unet/config.json";

    /// SDXL's micro-conditioning (`addition_embed_type: "text_time"`; other kinds are refused by
    /// [`check_supported`](crate::models::unet_2d_condition::check_supported)): the model has a second
    /// text encoder and takes [`TextTimeConditioning`](crate::models::unet_2d_condition::TextTimeConditioning).
    pub fn has_text_time(&self) -> bool {
        self.addition_embed_type.is_some()
    }

    /// Bounds and checks every field the U-Net is built from (see the `MAX_*` consts), before anything
    /// is: channel, layer and head counts, GroupNorm groups dividing every block's channels, heads
    /// dividing the channels of every block with attention, one value per block in per-block lists.
    /// Whether the architecture is implemented is
    /// [`check_supported`](crate::models::unet_2d_condition::check_supported)'s question.
    pub fn check(&self) -> Result<(), ConfigError> {
        let file = Self::FILE;
        let bad = |m: String| Err(ConfigError::new(file, m));
        in_range(file, "sample_size", self.sample_size, 1, MAX_IMAGE_SIDE)?;
        in_range(file, "in_channels", self.in_channels, 1, MAX_LATENT_CHANNELS)?;
        in_range(file, "out_channels", self.out_channels, 1, MAX_LATENT_CHANNELS)?;
        let channels = &self.block_out_channels;
        let n = channels.len();
        in_range(file, "the number of block_out_channels", n, 1, MAX_BLOCKS)?;
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad(format!(
                "{} down_block_types and {} up_block_types for {n} block_out_channels (one each per block expected)",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        in_range(file, "norm_num_groups", self.norm_num_groups, 1, MAX_WIDTH)?;
        for (i, &c) in channels.iter().enumerate() {
            in_range(file, &format!("block_out_channels[{i}]"), c, 1, MAX_WIDTH)?;
            if c % self.norm_num_groups != 0 {
                return bad(format!(
                    "norm_num_groups {} does not divide block_out_channels[{i}] {c}",
                    self.norm_num_groups
                ));
            }
        }
        in_range_f64(file, "norm_eps", self.norm_eps, EPS_RANGE)?;
        // The timestep embedding is `block_out_channels[0]` wide: half cosines, half sines, with
        // frequencies `exp(-ln(10000) i / (half - freq_shift))`.
        let half = channels[0] / 2;
        if !channels[0].is_multiple_of(2) {
            return bad(format!(
                "block_out_channels[0] {} is odd (the timestep embedding needs an even width)",
                channels[0]
            ));
        }
        if !(self.freq_shift.is_finite() && 0.0 <= self.freq_shift && self.freq_shift < half as f64) {
            return bad(format!("freq_shift {} is out of range (expected 0 to below {half})", self.freq_shift));
        }
        in_range(file, "downsample_padding", self.downsample_padding, 0, 1)?;
        self.layers_per_block.check(file, "layers_per_block", n, 1, MAX_LAYERS_PER_BLOCK)?;
        self.transformer_layers_per_block.check(file, "transformer_layers_per_block", n, 1, MAX_TRANSFORMER_LAYERS)?;
        self.attention_head_dim.check(file, "attention_head_dim", n, 1, MAX_HEADS)?;
        if let Some(heads) = &self.num_attention_heads {
            heads.check(file, "num_attention_heads", n, 1, MAX_HEADS)?;
        }
        in_range(file, "cross_attention_dim", self.cross_attention_dim, 1, MAX_WIDTH)?;
        if let Some(dim) = self.addition_time_embed_dim {
            in_range(file, "addition_time_embed_dim", dim, 2, MAX_WIDTH)?;
            if !dim.is_multiple_of(2) {
                return bad(format!(
                    "addition_time_embed_dim {dim} is odd (its sinusoidal features need an even width)"
                ));
            }
        }
        if let Some(dim) = self.projection_class_embeddings_input_dim {
            in_range(file, "projection_class_embeddings_input_dim", dim, 1, MAX_WIDTH)?;
        }
        if !self.mid_block_scale_factor.is_finite() {
            return bad(format!("mid_block_scale_factor {} is not a number", self.mid_block_scale_factor));
        }
        // Heads split the channels of every level with attention: a down block, the up block mirroring
        // it (up block i mirrors level n - 1 - i), and the mid block at the last level.
        let (heads, heads_field) = match &self.num_attention_heads {
            Some(heads) => (heads, "num_attention_heads"),
            None => (&self.attention_head_dim, "attention_head_dim"),
        };
        for (level, &c) in channels.iter().enumerate() {
            let attention = self.down_block_types[level].contains("CrossAttn")
                || self.up_block_types[n - 1 - level].contains("CrossAttn")
                || (level == n - 1 && self.mid_block_type.is_some());
            let h = heads.get(level);
            if attention && c % h != 0 {
                return bad(format!("{heads_field} {h} (heads) does not divide block_out_channels[{level}] {c}"));
            }
        }
        Ok(())
    }
}

impl AutoencoderKLConfig {
    /// The file this config is read from.
    pub const FILE: &'static str = "vae/config.json";

    /// Pixels per latent along each side (8 for SD).
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Bounds and checks every field the VAE is built from (see the `MAX_*` consts), before anything is.
    pub fn check(&self) -> Result<(), ConfigError> {
        let file = Self::FILE;
        // The pipeline encodes and decodes RGB images.
        in_range(file, "in_channels", self.in_channels, 3, 3)?;
        in_range(file, "out_channels", self.out_channels, 3, 3)?;
        in_range(file, "latent_channels", self.latent_channels, 1, MAX_LATENT_CHANNELS)?;
        let channels = &self.block_out_channels;
        in_range(file, "the number of block_out_channels", channels.len(), 1, MAX_BLOCKS)?;
        in_range(file, "norm_num_groups", self.norm_num_groups, 1, MAX_WIDTH)?;
        for (i, &c) in channels.iter().enumerate() {
            in_range(file, &format!("block_out_channels[{i}]"), c, 1, MAX_WIDTH)?;
            if c % self.norm_num_groups != 0 {
                let m = format!("norm_num_groups {} does not divide block_out_channels[{i}] {c}", self.norm_num_groups);
                return Err(ConfigError::new(file, m));
            }
        }
        in_range(file, "layers_per_block", self.layers_per_block, 1, MAX_LAYERS_PER_BLOCK)?;
        in_range_f64(file, "scaling_factor", self.scaling_factor, SCALING_FACTOR_RANGE)?;
        if let Some(shift) = self.shift_factor {
            in_range_f64(file, "shift_factor", shift, -1e3..=1e3)?;
        }
        if let Some(size) = self.sample_size {
            in_range(file, "sample_size", size, 1, MAX_IMAGE_SIDE)?;
        }
        Ok(())
    }
}

fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_head_dim() -> PerBlock {
    PerBlock::All(8)
}
fn default_one() -> PerBlock {
    PerBlock::All(1)
}
fn default_one_usize() -> usize {
    1
}
fn default_three() -> usize {
    3
}
fn default_four() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_default() -> String {
    "default".into()
}
fn default_positional() -> String {
    "positional".into()
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_silu() -> String {
    "silu".into()
}
fn default_scaling() -> f64 {
    0.18215
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> String {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        std::fs::read_to_string(root.join(path)).unwrap()
    }

    #[test]
    fn reads_the_tiny_model_configs() {
        let index: ModelIndex = parse("model_index.json", &fixture("tiny-sd/model_index.json")).unwrap();
        assert_eq!(index.class_name, "StableDiffusionPipeline");
        assert_eq!(index.components["unet"], Some(("diffusers".into(), "UNet2DConditionModel".into())));
        assert_eq!(index.components["safety_checker"], None);
        assert!(!index.components.contains_key("requires_safety_checker"));

        let unet: UNet2DConditionConfig = parse("unet/config.json", &fixture("tiny-sd/unet/config.json")).unwrap();
        assert_eq!((unet.in_channels, unet.cross_attention_dim, unet.attention_head_dim.get(1)), (4, 32, 8));
        assert_eq!(unet.down_block_types, ["DownBlock2D", "CrossAttnDownBlock2D"]);
        assert_eq!(unet.layers_per_block, PerBlock::All(2));

        let vae: AutoencoderKLConfig = parse("vae/config.json", &fixture("tiny-sd/vae/config.json")).unwrap();
        assert_eq!((vae.scale_factor(), vae.scaling_factor, vae.latent_channels), (2, 0.18215, 4));
    }

    #[test]
    fn per_block_lists_and_sd2_fields() {
        let json = r#"{"sample_size": 96, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 1024,
            "down_block_types": [], "up_block_types": [], "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": true,
            "some_future_field": {"x": 1}}"#;
        let unet: UNet2DConditionConfig = parse("unet/config.json", json).unwrap();
        assert_eq!([0, 1, 2, 3, 9].map(|i| unet.attention_head_dim.get(i)), [5, 10, 20, 20, 20]);
        assert!(unet.use_linear_projection);
    }

    /// SD-Turbo's and SDXL's `unet/config.json` (diffusers 0.24) say `"upcast_attention": null` and
    /// more: `null` is "not set", as in diffusers, except where diffusers gives `null` a meaning.
    #[test]
    fn null_means_the_default_as_in_diffusers() {
        let json = r#"{"sample_size": 64, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 1024,
            "down_block_types": [], "up_block_types": [], "block_out_channels": [320],
            "layers_per_block": 2, "attention_head_dim": null, "num_attention_heads": null,
            "upcast_attention": null, "use_linear_projection": null, "norm_num_groups": null,
            "addition_embed_type": null, "time_cond_proj_dim": null, "act_fn": null,
            "transformer_layers_per_block": null, "flip_sin_to_cos": null}"#;
        let unet: UNet2DConditionConfig = parse("unet/config.json", json).unwrap();
        assert!(!unet.upcast_attention && !unet.use_linear_projection && unet.flip_sin_to_cos);
        assert_eq!((unet.norm_num_groups, unet.act_fn.as_str()), (32, "silu"));
        assert_eq!((unet.attention_head_dim.get(0), unet.num_attention_heads), (8, None));
        assert_eq!(unet.mid_block_type.as_deref(), Some("UNetMidBlock2DCrossAttn"));
        // diffusers builds no mid block for an explicit null: kept, so the model is refused, not misread.
        let no_mid = json.replace("\"act_fn\": null", "\"mid_block_type\": null");
        assert_eq!(parse::<UNet2DConditionConfig>("unet/config.json", &no_mid).unwrap().mid_block_type, None);
        // A required field cannot be null.
        let err = parse::<UNet2DConditionConfig>("unet/config.json", &json.replace("1024", "null")).unwrap_err();
        assert!(err.message.contains("cross_attention_dim"), "{err}");

        let vae = r#"{"block_out_channels": [128, 256], "scaling_factor": null, "shift_factor": null,
            "latents_mean": null, "force_upcast": null, "_use_default_values": ["layers_per_block"],
            "layers_per_block": 7}"#;
        let vae: AutoencoderKLConfig = parse("vae/config.json", vae).unwrap();
        assert_eq!((vae.scaling_factor, vae.shift_factor, vae.layers_per_block), (0.18215, None, 1));
    }

    /// The bounds admit the largest real models: SDXL's U-Net (3 levels, 10 transformer layers, 2048-wide
    /// cross-attention; refused later as unsupported, not as broken), its VAE and OpenCLIP-bigG.
    #[test]
    fn the_bounds_admit_sdxl_and_openclip_bigg() {
        let unet = r#"{"act_fn": "silu", "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
            "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "norm_eps": 1e-05,
            "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10], "upcast_attention": null, "use_linear_projection": true,
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}"#;
        let unet: UNet2DConditionConfig = parse(UNet2DConditionConfig::FILE, unet).unwrap();
        unet.check().unwrap();
        crate::models::unet_2d_condition::check_supported(&unet).unwrap();
        let kandinsky = UNet2DConditionConfig { addition_embed_type: Some("image".into()), ..unet.clone() };
        let unsupported = crate::models::unet_2d_condition::check_supported(&kandinsky).unwrap_err();
        assert!(unsupported.to_string().contains("addition_embed_type \"image\""), "{unsupported}");
        let half = UNet2DConditionConfig { addition_time_embed_dim: None, ..unet.clone() };
        let broken = crate::models::unet_2d_condition::check_supported(&half).unwrap_err();
        assert!(broken.to_string().contains("needs addition_time_embed_dim"), "{broken}");
        let vae = r#"{"block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": false}"#;
        let vae: AutoencoderKLConfig = parse(AutoencoderKLConfig::FILE, vae).unwrap();
        vae.check().unwrap();
        let scheduler = crate::schedulers::SchedulerConfig::from_json(
            r#"{"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading",
            "interpolation_type": "linear", "sample_max_value": 1.0, "clip_sample": false}"#,
        )
        .unwrap();
        crate::model_folder::check_components(&unet, &vae, &scheduler).unwrap();
        let big_g = r#"{"hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
            "num_hidden_layers": 32, "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 2,
            "layer_norm_eps": 1e-05, "projection_dim": 1280}"#;
        crate::models::clip::ClipTextConfig::from_json(big_g).unwrap().check().unwrap();
    }

    #[test]
    fn out_of_bounds_fields_are_named_with_their_file() {
        let tiny = fixture("tiny-sd/unet/config.json");
        let unet = |field: &str, value: &str| {
            let mut json: Value = serde_json::from_str(&tiny).unwrap();
            json[field] = serde_json::from_str(value).unwrap();
            parse::<UNet2DConditionConfig>(UNet2DConditionConfig::FILE, &json.to_string()).unwrap().check()
        };
        assert_eq!(unet("norm_num_groups", "32"), Ok(()));
        assert_eq!(
            unet("norm_num_groups", "7").unwrap_err().to_string(),
            "unet/config.json: norm_num_groups 7 does not divide block_out_channels[0] 32"
        );
        assert!(unet("layers_per_block", "10000000").unwrap_err().message.contains("layers_per_block 10000000"));
        assert!(unet("layers_per_block", "[2]").unwrap_err().message.contains("1 entries for 2 blocks"));
        assert!(
            unet("attention_head_dim", "7").unwrap_err().message.contains("does not divide block_out_channels[1] 64")
        );
        assert!(unet("block_out_channels", "[]").is_err());
        assert!(unet("freq_shift", "16").unwrap_err().message.contains("freq_shift 16"));
    }

    #[test]
    fn a_missing_field_is_named_with_its_file() {
        let err = parse::<AutoencoderKLConfig>("vae/config.json", r#"{"latent_channels": 4}"#).unwrap_err();
        assert_eq!(err.file, "vae/config.json");
        assert!(err.message.contains("block_out_channels"), "{err}");
        assert!(parse::<ModelIndex>("model_index.json", "{}").unwrap_err().message.contains("_class_name"));
        assert!(parse::<UNet2DConditionConfig>("unet/config.json", "[1]").is_err());
    }
}
