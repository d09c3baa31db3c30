//! A diffusers model folder as the pipeline reads it, from disk (native) or from IndexedDB (the worker):
//! its configs and tokenizers parsed and checked together before any weight is read ([`ModelConfigs`]),
//! then the pipeline assembled from each component's weights ([`ModelConfigs::assemble`]). One path for
//! both, so a model loads, or is refused with the same message, everywhere.

use burn::tensor::Device;

use crate::config::{
    AutoencoderKLConfig, ConfigError, ModelIndex, UNet2DConditionConfig, check_components, check_text_encoders, parse,
};
use crate::memory::Precision;
use crate::models::autoencoder_kl::{VaeDecoder, VaeEncoder};
use crate::models::clip::ClipTextConfig;
use crate::models::into_f32;
use crate::models::unet_2d_condition::{UNet2DConditionModel, check_supported};
use crate::pipeline::{PipelineError, SecondTextEncoder, StableDiffusion, device_precision};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::{ClipTokenizer, TokenizerFiles};
use crate::weights::{IntoTensorSource, LoadError};

/// A component with a weights file, in the order they are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    TextEncoder,
    /// SDXL's second text encoder.
    TextEncoder2,
    Unet,
    Vae,
}

impl Part {
    /// The component's folder.
    pub fn folder(self) -> &'static str {
        match self {
            Part::TextEncoder => "text_encoder",
            Part::TextEncoder2 => "text_encoder_2",
            Part::Unet => "unet",
            Part::Vae => "vae",
        }
    }
}

/// The files of the tokenizer folder `folder` the tokenizer may read.
pub const TOKENIZER_FILES: [&str; 5] =
    ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"];

/// Reads one file of the folder by its path (`unet/config.json`): its bytes, `None` when the folder has
/// no such file, or why it could not be read.
pub type ReadFile<'a> = dyn FnMut(&str) -> Result<Option<Vec<u8>>, String> + 'a;

/// Everything of a model folder but its weights, parsed and checked on its own and together.
pub struct ModelConfigs {
    /// `model_index.json`, when the folder has one (the Hub's 2022 SD 2.x repos have none).
    pub index: Option<ModelIndex>,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextConfig,
    /// SDXL's `tokenizer_2` and `text_encoder_2`.
    pub second: Option<(ClipTokenizer, ClipTextConfig)>,
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
    pub scheduler: SchedulerConfig,
}

fn read_tokenizer(read: &mut ReadFile<'_>, folder: &str) -> Result<ClipTokenizer, PipelineError> {
    let mut files = Vec::with_capacity(TOKENIZER_FILES.len());
    for name in TOKENIZER_FILES {
        files.push(read(&format!("{folder}/{name}")).map_err(PipelineError::Model)?);
    }
    let file = |i: usize| files[i].as_deref();
    let tokenizer = ClipTokenizer::from_files(TokenizerFiles {
        tokenizer_json: file(0),
        vocab_json: file(1),
        merges_txt: file(2),
        tokenizer_config_json: file(3),
        special_tokens_map_json: file(4),
    });
    // The first tokenizer's errors read "tokenizer: ..." already.
    tokenizer.map_err(|e| match folder {
        "tokenizer" => PipelineError::Model(e.to_string()),
        _ => PipelineError::Model(format!("{folder}: {e}")),
    })
}

fn text(read: &mut ReadFile<'_>, path: &str) -> Result<String, PipelineError> {
    let bytes = read(path).map_err(PipelineError::Model)?;
    let bytes = bytes.ok_or_else(|| PipelineError::Model(format!("{path} is missing")))?;
    String::from_utf8(bytes).map_err(|e| PipelineError::Model(format!("{path}: {e}")))
}

fn config_err(e: ConfigError) -> PipelineError {
    PipelineError::Model(e.to_string())
}

impl ModelConfigs {
    /// Reads and checks the folder's configs and tokenizers through `read`: each on its own, against each
    /// other and against the tokenizers, and whether this implementation runs the architecture (an SDXL
    /// folder, one whose U-Net has `text_time` conditioning, also needs `text_encoder_2` and
    /// `tokenizer_2`). A broken file is [`PipelineError::Model`], an architecture not implemented
    /// [`PipelineError::Unsupported`].
    pub fn read(read: &mut ReadFile<'_>) -> Result<Self, PipelineError> {
        let index: Option<ModelIndex> = match read("model_index.json").map_err(PipelineError::Model)? {
            Some(bytes) => {
                let text =
                    String::from_utf8(bytes).map_err(|e| PipelineError::Model(format!("model_index.json: {e}")))?;
                Some(parse("model_index.json", &text).map_err(config_err)?)
            }
            None => None,
        };
        if let Some(index) = &index {
            let has = |c: &str| index.components.get(c).is_some_and(Option::is_some);
            if index.requires_aesthetics_score == Some(true) || (has("text_encoder_2") && !has("text_encoder")) {
                return Err(PipelineError::Unsupported(
                    "the SDXL refiner (aesthetic-score conditioning, one text encoder) is not supported".into(),
                ));
            }
        }
        let tokenizer = read_tokenizer(read, "tokenizer")?;
        let text_encoder = ClipTextConfig::from_json(&text(read, ClipTextConfig::FILE)?)
            .map_err(|e| PipelineError::Model(format!("{}: {e}", ClipTextConfig::FILE)))?;
        let unet: UNet2DConditionConfig =
            parse(UNet2DConditionConfig::FILE, &text(read, UNet2DConditionConfig::FILE)?).map_err(config_err)?;
        let vae: AutoencoderKLConfig =
            parse(AutoencoderKLConfig::FILE, &text(read, AutoencoderKLConfig::FILE)?).map_err(config_err)?;
        let scheduler = SchedulerConfig::from_json(&text(read, SchedulerConfig::FILE)?)
            .map_err(|e| PipelineError::Model(format!("{}: {e}", SchedulerConfig::FILE)))?;
        check_components(&unet, &vae, &scheduler).map_err(config_err)?;
        check_supported(&unet).map_err(|e| match e {
            LoadError::Unsupported(m) => PipelineError::Unsupported(m),
            e => PipelineError::Model(format!("unet: {e}")),
        })?;
        let second = if unet.has_text_time() {
            let tokenizer = read_tokenizer(read, "tokenizer_2")?;
            let file = "text_encoder_2/config.json";
            let config = ClipTextConfig::from_json(&text(read, file)?)
                .map_err(|e| PipelineError::Model(format!("{file}: {e}")))?;
            Some((tokenizer, config))
        } else {
            None
        };
        let mut encoders = vec![("text_encoder", "tokenizer", &text_encoder, &tokenizer)];
        if let Some((tokenizer_2, config_2)) = &second {
            encoders.push(("text_encoder_2", "tokenizer_2", config_2, tokenizer_2));
        }
        check_text_encoders(&unet, &encoders).map_err(config_err)?;
        Ok(Self { index, tokenizer, text_encoder, second, unet, vae, scheduler })
    }

    /// Whether this is an SDXL model (two text encoders, text-time conditioning).
    pub fn is_sdxl(&self) -> bool {
        self.second.is_some()
    }

    /// The components with weights, in load order.
    pub fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::TextEncoder];
        if self.is_sdxl() {
            parts.push(Part::TextEncoder2);
        }
        parts.extend([Part::Unet, Part::Vae]);
        parts
    }

    /// Whether the VAE runs in f32 on a device computing in `precision`: SDXL's VAE overflows in f16 and
    /// says so (`force_upcast`; the fp16-fix VAE does not), as diffusers' SDXL pipelines read it.
    pub fn vae_upcast(&self, precision: Precision) -> bool {
        self.is_sdxl() && self.vae.force_upcast && precision == Precision::F16
    }

    /// Builds the pipeline on `device` from each part's weights, which `weights` gives in [`Self::parts`]'
    /// order (the VAE's twice: decoder, then encoder).
    pub fn assemble<S: IntoTensorSource>(
        self,
        mut weights: impl FnMut(Part) -> Result<S, PipelineError>,
        device: &Device,
    ) -> Result<StableDiffusion, PipelineError> {
        let err = |part: Part| {
            move |e: LoadError| match e {
                LoadError::Unsupported(m) => PipelineError::Unsupported(m),
                e => PipelineError::Model(format!("{}: {e}", part.folder())),
            }
        };
        let vae_upcast = self.vae_upcast(device_precision(device));
        let text_encoder =
            self.text_encoder.load(weights(Part::TextEncoder)?, device).map_err(err(Part::TextEncoder))?;
        let text_encoder_2 = match self.second {
            Some((tokenizer, config)) => Some(SecondTextEncoder {
                text_encoder: config
                    .load_with_projection(weights(Part::TextEncoder2)?, device)
                    .map_err(err(Part::TextEncoder2))?,
                tokenizer,
            }),
            None => None,
        };
        let unet = UNet2DConditionModel::load(&self.unet, weights(Part::Unet)?, device).map_err(err(Part::Unet))?;
        let vae_decoder = VaeDecoder::load(&self.vae, weights(Part::Vae)?, device).map_err(err(Part::Vae))?;
        let vae_encoder = VaeEncoder::load(&self.vae, weights(Part::Vae)?, device).map_err(err(Part::Vae))?;
        let (vae_decoder, vae_encoder) =
            if vae_upcast { (into_f32(vae_decoder), into_f32(vae_encoder)) } else { (vae_decoder, vae_encoder) };
        Ok(StableDiffusion {
            tokenizer: self.tokenizer,
            text_encoder,
            text_encoder_2,
            // diffusers' SDXL pipelines default to true.
            force_zeros_for_empty_prompt: self.index.and_then(|i| i.force_zeros_for_empty_prompt).unwrap_or(true),
            unet,
            unet_config: self.unet,
            vae_decoder,
            vae_encoder,
            vae_config: self.vae,
            vae_upcast,
            scheduler_config: self.scheduler,
            textual_inversions: Vec::new(),
            device: device.clone(),
        })
    }
}
