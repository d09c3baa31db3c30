//! A diffusers model folder as the pipeline reads it, from disk (native) or from IndexedDB (the worker):
//! its configs and tokenizers parsed and checked together before any weight is read ([`ModelConfigs`]),
//! then the pipeline assembled from each component's weights ([`ModelConfigs::assemble`]). One path for
//! both, so a model loads, or is refused with the same message, everywhere.

use burn::tensor::Device;

use crate::config::{AutoencoderKLConfig, ConfigError, MAX_IMAGE_SIDE, ModelIndex, UNet2DConditionConfig, parse};
use crate::memory::Precision;
use crate::models::autoencoder_kl::{VaeDecoder, VaeEncoder};
use crate::models::clip::ClipTextConfig;
use crate::models::into_f32;
use crate::models::unet_2d_condition::{UNet2DConditionModel, check_supported};
use crate::pipeline::{PipelineError, SecondTextEncoder, StableDiffusion, device_precision};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{IntoTensorSource, LoadError};

/// Checks the U-Net, VAE and scheduler configs, each on its own and against each other: what
/// [`crate::pipeline::validate_request`] and the memory plan may rely on before any weight is read.
pub fn check_components(
    unet: &UNet2DConditionConfig,
    vae: &AutoencoderKLConfig,
    scheduler: &SchedulerConfig,
) -> Result<(), ConfigError> {
    unet.check()?;
    vae.check()?;
    scheduler.check().map_err(|e| {
        let message = e.to_string();
        let message = message.strip_prefix("scheduler config: ").unwrap_or(&message);
        ConfigError::new(SchedulerConfig::FILE, message)
    })?;
    let file = UNet2DConditionConfig::FILE;
    if unet.out_channels != vae.latent_channels {
        return Err(ConfigError::new(
            file,
            format!(
                "out_channels {} differs from vae/config.json's latent_channels {}",
                unet.out_channels, vae.latent_channels
            ),
        ));
    }
    let side = unet.sample_size * vae.scale_factor();
    if side > MAX_IMAGE_SIDE {
        return Err(ConfigError::new(
            file,
            format!(
                "sample_size {} x the VAE's scale factor {} is {side} px, more than the {MAX_IMAGE_SIDE} px this app supports",
                unet.sample_size,
                vae.scale_factor()
            ),
        ));
    }
    Ok(())
}

/// Checks the text encoders' configs on their own, against the U-Net's cross-attention and against their
/// tokenizers: every id a tokenizer can produce must be a row of its encoder's embedding table, and every
/// position of its `model_max_length` a row of the position table. The encoders come as (their folder,
/// their tokenizer's folder, config, tokenizer): one for SD 1.x/2.x, two for SDXL, whose hidden states are
/// concatenated (so their widths add up to the U-Net's cross-attention width) and whose second encoder's
/// projected pooled output feeds the U-Net's `add_embedding` with the six `time_ids` features.
pub fn check_text_encoders(
    unet: &UNet2DConditionConfig,
    encoders: &[(&str, &str, &ClipTextConfig, &ClipTokenizer)],
) -> Result<(), ConfigError> {
    let mut width = 0;
    for &(folder, tokenizer_folder, text, tokenizer) in encoders {
        let file = format!("{folder}/config.json");
        text.check_file(&file)?;
        width += text.hidden_size;
        if tokenizer.max_length > text.max_position_embeddings {
            return Err(ConfigError::new(
                &format!("{tokenizer_folder}/tokenizer_config.json"),
                format!(
                    "model_max_length {} is more than {file}'s max_position_embeddings {}",
                    tokenizer.max_length, text.max_position_embeddings
                ),
            ));
        }
        let ids = tokenizer.id_bound();
        if ids > text.vocab_size {
            return Err(ConfigError::new(
                &file,
                format!("vocab_size {} is smaller than the tokenizer's {ids} token ids", text.vocab_size),
            ));
        }
    }
    let widths = encoders.iter().map(|e| format!("{}/config.json's hidden_size {}", e.0, e.2.hidden_size));
    if unet.cross_attention_dim != width {
        return Err(ConfigError::new(
            UNet2DConditionConfig::FILE,
            format!(
                "cross_attention_dim {} differs from {}",
                unet.cross_attention_dim,
                widths.collect::<Vec<_>>().join(" plus ")
            ),
        ));
    }
    if let (Some(time), Some(input)) = (unet.addition_time_embed_dim, unet.projection_class_embeddings_input_dim) {
        let Some((folder, _, pooled, _)) = encoders.get(1) else {
            return Err(ConfigError::new(
                UNet2DConditionConfig::FILE,
                "addition_embed_type \"text_time\" (SDXL) needs a second text encoder (text_encoder_2)",
            ));
        };
        if input != pooled.projection_dim + 6 * time {
            return Err(ConfigError::new(
                UNet2DConditionConfig::FILE,
                format!(
                    "projection_class_embeddings_input_dim {input} is not {folder}/config.json's projection_dim {} \
                     plus 6 x addition_time_embed_dim {time}",
                    pooled.projection_dim
                ),
            ));
        }
    }
    Ok(())
}

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

    /// The component a LoRA adapts in this part and the model's names for the file's tensors; `None`
    /// for the VAE and for SDXL's second text encoder (LoRAs for SDXL are refused).
    pub fn lora_adapted(self) -> Option<(crate::lora::Component, crate::weights::KeyMap)> {
        match self {
            Part::TextEncoder => Some((crate::lora::Component::TextEncoder, crate::models::clip::clip_key_map)),
            Part::Unet => Some((crate::lora::Component::Unet, |name| Some(name.to_string()))),
            Part::TextEncoder2 | Part::Vae => None,
        }
    }
}

/// Reads one file of the folder by its path (`unet/config.json`): its bytes, `None` when the folder has
/// no such file, or why it could not be read.
pub type ReadFile<'a> = dyn FnMut(&str) -> Result<Option<Vec<u8>>, String> + 'a;

/// The U-Net's, VAE's and scheduler's configs, parsed and checked on their own and against each other:
/// what the memory plan and the form's defaults need (the worker reads them for a model whose other
/// files may not be stored yet), and the part of [`ModelConfigs::read`] that reads them.
pub struct ComponentConfigs {
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
    pub scheduler: SchedulerConfig,
}

impl ComponentConfigs {
    /// The files [`Self::read`] reads.
    pub const FILES: [&str; 3] = [UNet2DConditionConfig::FILE, AutoencoderKLConfig::FILE, SchedulerConfig::FILE];

    pub fn read(read: &mut ReadFile<'_>) -> Result<Self, PipelineError> {
        let unet: UNet2DConditionConfig =
            parse(UNet2DConditionConfig::FILE, &text(read, UNet2DConditionConfig::FILE)?).map_err(config_err)?;
        let vae: AutoencoderKLConfig =
            parse(AutoencoderKLConfig::FILE, &text(read, AutoencoderKLConfig::FILE)?).map_err(config_err)?;
        let scheduler = SchedulerConfig::from_json(&text(read, SchedulerConfig::FILE)?)
            .map_err(|e| PipelineError::Model(format!("{}: {e}", SchedulerConfig::FILE)))?;
        check_components(&unet, &vae, &scheduler).map_err(config_err)?;
        Ok(Self { unet, vae, scheduler })
    }
}

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
    let mut files: [Option<Vec<u8>>; 5] = Default::default();
    for (file, name) in files.iter_mut().zip(ClipTokenizer::FILES) {
        *file = read(&format!("{folder}/{name}")).map_err(PipelineError::Model)?;
    }
    let tokenizer = ClipTokenizer::from_named_files(&files);
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
        let ComponentConfigs { unet, vae, scheduler } = ComponentConfigs::read(read)?;
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
            base_vocabulary: None,
            device: device.clone(),
        })
    }
}

/// Loading a diffusers model folder from disk (native; the browser streams the same files).
#[cfg(not(target_arch = "wasm32"))]
impl StableDiffusion {
    /// Loads every component of a diffusers folder onto `device`. The tokenizer and every config are
    /// read, and the configs checked on their own, against each other and against the tokenizer,
    /// before any weight is read or any layer built.
    pub fn load_dir(
        dir: &std::path::Path,
        variant: Option<crate::weights::Variant>,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        Self::load_dir_with_loras(dir, variant, &[], device)
    }

    /// [`Self::load_dir`] with LoRAs (each with its weight) merged into the text encoder's and the
    /// U-Net's weights as they load ([`crate::lora`]). A LoRA with a layer that fits no weight of this
    /// model is refused (`Invalid`) before any weight is read.
    pub fn load_dir_with_loras(
        dir: &std::path::Path,
        variant: Option<crate::weights::Variant>,
        loras: &[(crate::lora::Lora, f32)],
        device: &Device,
    ) -> Result<Self, PipelineError> {
        Self::load_dir_inner(dir, variant, loras, None, device)
    }

    /// [`Self::load_dir`], with what [`crate::lora::Merged`] needs to merge LoRAs into the loaded model
    /// later (as the browser does): no LoRA merged yet.
    pub fn load_dir_adaptable(
        dir: &std::path::Path,
        variant: Option<crate::weights::Variant>,
        device: &Device,
    ) -> Result<(Self, crate::lora::Merged), PipelineError> {
        let sink = crate::lora::TargetSink::default();
        let model = Self::load_dir_inner(dir, variant, &[], Some(&sink), device)?;
        Ok((model, crate::lora::Merged::new(sink.take())))
    }

    fn load_dir_inner(
        dir: &std::path::Path,
        variant: Option<crate::weights::Variant>,
        loras: &[(crate::lora::Lora, f32)],
        sink: Option<&crate::lora::TargetSink>,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        use crate::lora::WithLoras;
        use crate::model_folder::{ModelConfigs, Part};
        use crate::weights::{SafetensorsReader, component_weights};

        let model = dir.display();
        if !dir.is_dir() {
            return Err(PipelineError::Invalid(format!("model {model}: is not a folder")));
        }
        // As the worker: an architecture not implemented is `unsupported`, anything else a broken model.
        let in_model = |e: PipelineError| match e {
            PipelineError::Model(m) => PipelineError::Model(format!("model {model}: {m}")),
            PipelineError::Unsupported(m) => PipelineError::Unsupported(format!("model {model}: {m}")),
            e => e,
        };
        let mut read = |path: &str| match std::fs::read(dir.join(path)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {path}: {e}")),
        };
        let configs = ModelConfigs::read(&mut read).map_err(in_model)?;
        if configs.is_sdxl() && (!loras.is_empty() || sink.is_some()) {
            return Err(in_model(PipelineError::Unsupported("LoRAs for SDXL are not supported yet".into())));
        }
        let weights = |part: Part| {
            let folder = part.folder();
            let model_err = |m: String| PipelineError::Model(format!("{folder}: {m}"));
            let path =
                component_weights(&dir.join(folder), variant).map_err(|e| PipelineError::Model(e.to_string()))?;
            let file =
                std::fs::File::open(&path).map_err(|e| PipelineError::Model(format!("{}: {e}", path.display())))?;
            let reader = SafetensorsReader::new(file).map_err(|e| model_err(e.to_string()))?;
            // LoRAs adapt the text encoder and the U-Net (SD 1.x/2.x only, refused above for SDXL).
            let adapted = part.lora_adapted();
            let reader = match adapted {
                Some((c, key_map)) => {
                    WithLoras::new(reader, key_map, c, loras).map_err(|e| PipelineError::Invalid(e.to_string()))?
                }
                None => WithLoras::plain(reader),
            };
            // Targets only where a caller keeps them (`load_dir_adaptable`).
            Ok(match sink {
                Some(sink) => reader.recording(adapted, sink.clone()),
                None => reader,
            })
        };
        // Every LoRA layer must fit a weight: checked on the headers before any weight is read.
        if !loras.is_empty() {
            weights(Part::TextEncoder).map_err(in_model)?;
            weights(Part::Unet).map_err(in_model)?;
        }
        configs.assemble(weights, device).map_err(in_model)
    }
}
