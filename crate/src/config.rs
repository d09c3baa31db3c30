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
        Ok(Self { class_name, components })
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
}

impl AutoencoderKLConfig {
    /// Pixels per latent along each side (8 for SD).
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
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

    #[test]
    fn a_missing_field_is_named_with_its_file() {
        let err = parse::<AutoencoderKLConfig>("vae/config.json", r#"{"latent_channels": 4}"#).unwrap_err();
        assert_eq!(err.file, "vae/config.json");
        assert!(err.message.contains("block_out_channels"), "{err}");
        assert!(parse::<ModelIndex>("model_index.json", "{}").unwrap_err().message.contains("_class_name"));
        assert!(parse::<UNet2DConditionConfig>("unet/config.json", "[1]").is_err());
    }
}
