//! The Stable Diffusion pipelines (txt2img, img2img, inpainting), following diffusers'
//! `StableDiffusionPipeline`, `StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline`
//! step for step, on any device (Flex, native wgpu, WebGPU). Random numbers come from one
//! [`TorchRng`] in diffusers' order, so a seed gives diffusers' image.

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use crate::config::{AutoencoderKLConfig, UNet2DConditionConfig};
use crate::limits::{MAX_BATCH, MAX_CONDITIONING_SIDE, MAX_GUIDANCE, MAX_SIDE, MAX_STEPS};
use crate::memory::{self, MemoryPlan, Precision, TooLarge, Workload};
use crate::models::autoencoder_kl::{DEFAULT_BAND_BYTES, VaeDecoder, VaeEncoder};
use crate::models::clip::ClipTextModel;
use crate::models::resnet::upsample_nearest;
use crate::models::unet_2d_condition::{TextTimeConditioning, UNet2DConditionModel};
use crate::prompt_weighting::{self, PromptError};
use crate::rng::TorchRng;
use crate::schedulers::{self, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};
use crate::textual_inversion::Embedding;
use crate::tokenizer::{ClipTokenizer, TokenizerError};

/// Why a generation did not produce images. Every variant is the caller's input or the model; none
/// leaves the pipeline unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PipelineError {
    /// A request field is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The scheduler refused the settings (unknown name, unsupported config, too many steps).
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The prompt could not be tokenised.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The request needs a model part this model does not have (inpainting with a 4-channel U-Net...).
    #[error("{0}")]
    Unsupported(String),
    /// The model's files are broken: a config out of bounds or inconsistent, missing or mis-shaped
    /// tensors, unreadable files.
    #[error("{0}")]
    Model(String),
    /// The prompt's weighting syntax is wrong, or the prompt is too long.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The caller cancelled (between two steps).
    #[error("cancelled")]
    Cancelled,
    /// The request needs a GPU buffer over the cap that cannot be split (the message says what to lower).
    #[error(transparent)]
    TooLarge(#[from] crate::memory::TooLarge),
    /// The device failed to run the work or to return a result (device lost, out of memory).
    #[error("the GPU failed: {0}")]
    Device(String),
    /// The device reported an error while the work ran (out of memory, a rejected buffer or kernel):
    /// the result cannot be trusted, so there is none.
    #[error(transparent)]
    Gpu(crate::Error),
}

/// An RGB image with values in [0, 1], row-major `[height, width, 3]` (or one channel for masks).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

/// What to generate. Defaults follow diffusers' `__call__`.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Absent means the empty string's embedding, as diffusers.
    pub negative_prompt: String,
    pub steps: usize,
    /// Classifier-free guidance scale; <= 1 runs the U-Net on the positive batch alone.
    pub guidance: f32,
    pub seed: u64,
    /// Multiples of 8; `None`: the init image's size, else the U-Net's `sample_size` x the VAE's factor.
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Images per prompt.
    pub batch: usize,
    /// `None`: the model's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    /// img2img / inpainting source image.
    pub init_image: Option<Image>,
    /// Inpainting mask (white = repaint), the init image's size.
    pub mask: Option<Image>,
    /// How much of the schedule runs on an init image (1: all of it).
    pub strength: f32,
    /// Report a [`Progress::Preview`] every this many steps (0: never).
    pub preview_every: usize,
    /// AUTOMATIC1111's prompt syntax ([`crate::prompt_weighting`]): `(word:1.3)`, `[word]`, `BREAK`,
    /// prompts past 75 tokens in chunks. Off: diffusers' encoding (77 tokens, truncated, brackets are
    /// text). A plain prompt that fits encodes exactly the same either way.
    pub prompt_weighting: bool,
    /// SDXL: the prompt of the second text encoder; `None`: the prompt (diffusers' `prompt_2`).
    pub prompt_2: Option<String>,
    /// SDXL: the negative prompt of the second text encoder; `None`: the negative prompt. When both
    /// negative prompts are empty, SDXL models with `force_zeros_for_empty_prompt` use zeros (diffusers'
    /// `negative_prompt=None`).
    pub negative_prompt_2: Option<String>,
    /// SDXL micro-conditioning `[height, width]` of the "original" image; `None`: the generated size.
    pub original_size: Option<[usize; 2]>,
    /// SDXL micro-conditioning: the crop's top-left corner `[top, left]` (diffusers' `crops_coords_top_left`).
    pub crops_coords_top_left: [usize; 2],
    /// SDXL micro-conditioning `[height, width]` of the target; `None`: the generated size.
    pub target_size: Option<[usize; 2]>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: crate::limits::DEFAULT_STEPS,
            guidance: crate::limits::DEFAULT_GUIDANCE,
            seed: 0,
            width: None,
            height: None,
            batch: 1,
            scheduler: None,
            init_image: None,
            mask: None,
            strength: 1.0,
            preview_every: 0,
            prompt_weighting: true,
            prompt_2: None,
            negative_prompt_2: None,
            original_size: None,
            crops_coords_top_left: [0, 0],
            target_size: None,
        }
    }
}

/// Progress reported to the caller; returning `false` from the callback cancels.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Text encoding (and image encoding for img2img/inpainting) is done.
    Encoded,
    /// Denoising step `step` (1-based) of `total` is done (queued: on a GPU, `latents` is ready once a
    /// readback of it completes, which is how the browser paces itself).
    Step { step: usize, total: usize, latents: Tensor<4> },
    /// A cheap preview of the first image after `step` (every `preview_every` steps): the latents through
    /// a fixed linear latent-to-RGB map, at latent resolution, `[1, h / f, w / f, 3]` in [0, 1]. The tensor
    /// stays on the device; the caller reads it back (asynchronously in browsers).
    Preview { step: usize, image: Tensor<4> },
    /// The denoising loop is done; the VAE decode is queued next.
    Denoised,
    /// The VAE decode is done.
    Decoded,
    /// Measuring the kernels for the shapes this device has not measured yet ([`crate::kernels::tune`]:
    /// after the first step, and before encoding for those the last generation's decode recorded):
    /// `done` of `total` shapes.
    Tune { done: usize, total: usize },
}

/// The images and, when asked for, every intermediate tensor under the fixtures' names.
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    /// `[batch, height, width, 3]` in [0, 1].
    pub images: Tensor<4>,
    pub width: usize,
    pub height: usize,
    pub scheduler: SchedulerKind,
    /// (name, shape, values) in the order they were produced; empty unless requested.
    pub dump: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// [`crate::gpu::uncaptured_errors`] when the work began: the readback fails if one came since.
    pub gpu_errors_mark: u32,
}

impl GenerateOutput {
    /// RGBA8 pixels per image (diffusers rounds `image * 255`). Blocks on the readback (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn rgba8(&self) -> Vec<Vec<u8>> {
        pollster::block_on(self.rgba8_async()).expect("reading the images back")
    }

    /// RGBA8 pixels per image, read back without blocking (the browser's way).
    pub async fn rgba8_async(&self) -> Result<Vec<Vec<u8>>, PipelineError> {
        let values = read_f32(self.images.clone()).await?;
        crate::gpu::errors_since(self.gpu_errors_mark).map_err(PipelineError::Gpu)?;
        Ok(values.chunks(self.width * self.height * 3).map(rgba8).collect())
    }
}

/// A tensor's values on the host (asynchronously: a browser cannot block on the GPU).
pub async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, PipelineError> {
    let data = t.into_data_async().await.map_err(|e| PipelineError::Device(format!("{e:?}")))?;
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| PipelineError::Device(format!("{e:?}")))
}

/// RGB values in [0, 1] (`[.., 3]` row-major) as opaque RGBA8.
pub fn rgba8(rgb: &[f32]) -> Vec<u8> {
    rgb.chunks(3).flat_map(|p| [q(p[0]), q(p[1]), q(p[2]), 255]).collect()
}

fn q(v: f32) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

/// SD 1.x/2.x latents (4 channels) to approximate RGB with the linear coefficients of A1111's "Approx
/// cheap" live preview (fitted to the SD VAE's decodes). A preview only: no VAE, 64x fewer pixels.
fn latent_preview(latents: Tensor<4>) -> Tensor<4> {
    const FACTORS: [[f32; 3]; 4] =
        [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]];
    let device = latents.device();
    let [_, c, h, w] = latents.dims();
    let m = Tensor::<2>::from_data(TensorData::new(FACTORS.concat(), [4, 3]), &device);
    let rgb = latents.permute([0, 2, 3, 1]).reshape([h * w, c]).matmul(m);
    ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).reshape([1, h, w, 3])
}

/// SDXL's second text encoder (OpenCLIP-bigG with its projection) and its tokenizer.
pub struct SecondTextEncoder {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
}

/// A prompt's text conditioning.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// What the U-Net attends to: the text encoder's last hidden states (SD 1.x/2.x), or both encoders'
    /// penultimate ones side by side (SDXL). `[1, tokens, cross_attention_dim]`
    pub states: Tensor<3>,
    /// SDXL: the second encoder's projected pooled output. `[1, projection_dim]`
    pub pooled: Option<Tensor<2>>,
}

/// A loaded Stable Diffusion model: every component on one device.
pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL's second text encoder; `None` for SD 1.x/2.x.
    pub text_encoder_2: Option<SecondTextEncoder>,
    /// SDXL: an empty negative prompt conditions on zeros (`model_index.json`).
    pub force_zeros_for_empty_prompt: bool,
    pub unet: UNet2DConditionModel,
    pub unet_config: UNet2DConditionConfig,
    pub vae_decoder: VaeDecoder,
    pub vae_encoder: VaeEncoder,
    pub vae_config: AutoencoderKLConfig,
    /// The VAE runs in f32 on this f16 device (SDXL's `force_upcast`).
    pub vae_upcast: bool,
    pub scheduler_config: SchedulerConfig,
    /// Textual-inversion embeddings added with [`Self::add_textual_inversion`].
    pub textual_inversions: Vec<Embedding>,
    /// The tokenizer and token table before the first embedding was added (what
    /// [`Self::set_textual_inversions`] starts again from).
    pub base_vocabulary: Option<(ClipTokenizer, crate::models::clip::TokenEmbedding)>,
    pub device: Device,
}

/// Tensor dumps for `--dump`, collected only when asked.
struct Dump(Option<Vec<(String, Vec<usize>, Vec<f32>)>>);

impl Dump {
    async fn add<const D: usize>(&mut self, name: impl Into<String>, t: &Tensor<D>) -> Result<(), PipelineError> {
        if let Some(list) = &mut self.0 {
            let values = read_f32(t.clone()).await?;
            list.push((name.into(), t.dims().to_vec(), values));
        }
        Ok(())
    }
}

impl StableDiffusion {
    /// The scheduler the model ships with (`scheduler/scheduler_config.json`'s `_class_name`).
    pub fn default_scheduler(&self) -> Result<SchedulerKind, SchedulerError> {
        SchedulerKind::model_default(&self.scheduler_config)
    }

    /// Pixels per latent.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// diffusers' `encode_prompt` for one prompt (and SDXL's `prompt_2`, `None`: the same prompt): 77
    /// tokens, or with `weighting` A1111's weighted chunks of 77 ([`crate::prompt_weighting`]).
    /// SD 1.x/2.x: the text encoder's last hidden states. SDXL: both encoders' penultimate hidden states
    /// side by side, and the second encoder's projected pooled output (of the first chunk, unweighted,
    /// as A1111).
    pub fn encode_prompt(
        &self,
        text: &str,
        text_2: Option<&str>,
        weighting: bool,
    ) -> Result<PromptEmbeds, PipelineError> {
        let expanded = self.textual_inversions.iter().fold(text.to_string(), |t, e| e.expand(&t));
        let text = expanded.as_str();
        let Some(second) = &self.text_encoder_2 else {
            if text_2.is_some() {
                return Err(PipelineError::Unsupported("prompt_2 needs an SDXL model (a second text encoder)".into()));
            }
            let (states, _) = self.encode_text(&self.tokenizer, &self.text_encoder, false, text, weighting)?;
            return Ok(PromptEmbeds { states, pooled: None });
        };
        let (first, _) = self.encode_text(&self.tokenizer, &self.text_encoder, true, text, weighting)?;
        let text_2 = text_2.unwrap_or(text);
        let (states_2, pooled) = self.encode_text(&second.tokenizer, &second.text_encoder, true, text_2, weighting)?;
        if first.dims()[1] != states_2.dims()[1] {
            return Err(PipelineError::Invalid(format!(
                "the prompt and prompt_2 make {} and {} chunks of 75 tokens: the two text encoders need as many",
                first.dims()[1] / 77,
                states_2.dims()[1] / 77
            )));
        }
        Ok(PromptEmbeds { states: Tensor::cat(vec![first, states_2], 2), pooled })
    }

    /// One text encoder's states for `text` (`penultimate`: the second-to-last layer's, as SDXL), chunk
    /// after chunk; and its projected pooled output of the first chunk when it has a projection.
    fn encode_text(
        &self,
        tokenizer: &ClipTokenizer,
        encoder: &ClipTextModel,
        penultimate: bool,
        text: &str,
        weighting: bool,
    ) -> Result<(Tensor<3>, Option<Tensor<2>>), PipelineError> {
        if !weighting {
            return Ok(self.encode_ids(encoder, penultimate, &tokenizer.encode(text)?.ids, None));
        }
        let mut pooled = None;
        let mut states = Vec::new();
        for c in prompt_weighting::prompt_chunks(tokenizer, text)? {
            let (z, p) = self.encode_ids(encoder, penultimate, &c.ids, (!c.is_unweighted()).then_some(&c.weights[..]));
            pooled = pooled.or(p);
            states.push(z);
        }
        Ok((Tensor::cat(states, 1), pooled))
    }

    /// Adds a textual-inversion embedding ([`crate::textual_inversion`]): its tokens to the tokenizer, its
    /// vectors to the text encoder's token table. Refused (nothing changed) when its width is not the text
    /// encoder's or its word is already a token.
    pub fn add_textual_inversion(&mut self, embedding: Embedding) -> Result<(), PipelineError> {
        let invalid = |m: String| PipelineError::Invalid(format!("embedding {}: {m}", embedding.token));
        if self.text_encoder_2.is_some() {
            return Err(PipelineError::Unsupported(format!(
                "embedding {}: textual inversion for SDXL (vectors for both text encoders) is not implemented yet",
                embedding.token
            )));
        }
        let width = self.text_encoder.token_embedding.width();
        if embedding.width != width {
            return Err(invalid(format!("its vectors are {} wide, this text encoder's {width}", embedding.width)));
        }
        let rows = self.text_encoder.token_embedding.rows();
        if self.tokenizer.id_bound() != rows {
            return Err(invalid(format!(
                "the tokenizer's {} ids and the text encoder's {rows} rows are out of step",
                self.tokenizer.id_bound()
            )));
        }
        let ids = self.tokenizer.add_tokens(&embedding.tokens()).map_err(|e| invalid(e.to_string()))?;
        // Added tokens take the next ids, which are the appended rows.
        debug_assert_eq!(ids, (rows as u32..(rows + embedding.count) as u32).collect::<Vec<_>>());
        let data = TensorData::new(embedding.vectors.clone(), [embedding.count, width]);
        self.text_encoder.token_embedding.append(Tensor::from_data(data, &self.device));
        self.textual_inversions.push(embedding);
        Ok(())
    }

    /// Makes `embeddings` (in order) the model's textual inversions, in place of those it has: the
    /// tokenizer and token table go back to what they were before the first one was added (kept, as
    /// shared tensor handles), then each is added. Nothing happens when they are the ones it has; on an
    /// error the model has none.
    pub fn set_textual_inversions(&mut self, embeddings: Vec<Embedding>) -> Result<(), PipelineError> {
        if self.textual_inversions == embeddings {
            return Ok(());
        }
        if self.base_vocabulary.is_none() {
            self.base_vocabulary = Some((self.tokenizer.clone(), self.text_encoder.token_embedding.clone()));
        }
        let (tokenizer, table) = self.base_vocabulary.clone().expect("kept above");
        self.tokenizer = tokenizer;
        self.text_encoder.token_embedding = table;
        self.textual_inversions.clear();
        for embedding in embeddings {
            if let Err(e) = self.add_textual_inversion(embedding) {
                // Back to none (the base again).
                self.set_textual_inversions(Vec::new())?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// One chunk of ids through a text encoder, `[1, ids, hidden]` (and its projected pooled output, if it
    /// has the projection); with weights, A1111's "Original" emphasis: each token's states times its
    /// weight, then the chunk scaled back to its mean before.
    fn encode_ids(
        &self,
        encoder: &ClipTextModel,
        penultimate: bool,
        ids: &[u32],
        weights: Option<&[f32]>,
    ) -> (Tensor<3>, Option<Tensor<2>>) {
        let n = ids.len();
        let ids = ids.iter().map(|&i| i as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &self.device);
        let out = encoder.forward(ids);
        let z = if penultimate { out.penultimate_hidden_state } else { out.last_hidden_state };
        (self.emphasis(z, weights), out.text_embeds)
    }

    fn emphasis(&self, z: Tensor<3>, weights: Option<&[f32]>) -> Tensor<3> {
        let Some(weights) = weights else { return z };
        let n = weights.len();
        let original_mean = z.clone().mean().reshape([1, 1, 1]);
        let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [n]), &self.device).reshape([1, n, 1]);
        let z = z * w;
        let new_mean = z.clone().mean().reshape([1, 1, 1]);
        // A zero mean (a text encoder whose final norm has no bias) makes A1111's ratio 0/0 or x/0, and its
        // image NaN; such a chunk keeps the weighted states as they are.
        let ratio = original_mean / new_mean;
        let ratio = ratio.clone().mask_fill(ratio.clone().is_nan().bool_or(ratio.is_inf()), 1.0);
        z * ratio
    }

    fn image_tensor(&self, image: &Image) -> Tensor<4> {
        let t = Tensor::<3>::from_data(
            TensorData::new(image.data.clone(), [image.height, image.width, image.channels]),
            &self.device,
        );
        t.permute([2, 0, 1]).unsqueeze::<4>()
    }

    /// The element type this model's activations are computed in on its device.
    pub fn precision(&self) -> Precision {
        device_precision(&self.device)
    }

    /// Checks a request against diffusers' `check_inputs`, this model and the GPU buffer cap (see
    /// [`crate::memory`]); returns (width, height).
    pub fn validate(&self, r: &GenerateRequest) -> Result<(usize, usize), PipelineError> {
        let size = validate_request(&self.unet_config, &self.vae_config, r, self.precision())?;
        if r.prompt_weighting {
            for text in [&r.prompt, &r.negative_prompt] {
                prompt_weighting::prompt_chunks(&self.tokenizer, text)?;
            }
            if let Some(second) = &self.text_encoder_2 {
                for text in [&r.prompt_2, &r.negative_prompt_2].into_iter().flatten() {
                    prompt_weighting::prompt_chunks(&second.tokenizer, text)?;
                }
            }
        }
        Ok((size.0, size.1))
    }

    /// Runs the pipeline, blocking (native). `progress` is called after encoding, after each step and
    /// after decoding; returning `false` cancels with [`PipelineError::Cancelled`]. `dump` records every
    /// intermediate.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(
        &self,
        r: &GenerateRequest,
        dump: bool,
        mut progress: impl FnMut(Progress) -> bool,
    ) -> Result<GenerateOutput, PipelineError> {
        pollster::block_on(self.generate_async(r, dump, async |p| progress(p)))
    }

    /// Runs the pipeline without blocking: every readback is awaited and `progress` is async, so a
    /// browser worker stays responsive (it awaits the GPU and yields to its event loop there, which is
    /// what lets a `Cancel` message in between steps).
    ///
    /// diffusers' `__call__`, stage by stage; the mode ([`Mode`]: txt2img, img2img or inpainting) is a
    /// value the stages take, as the three diffusers pipelines share these stages.
    pub async fn generate_async(
        &self,
        r: &GenerateRequest,
        dump: bool,
        mut progress: impl AsyncFnMut(Progress) -> bool,
    ) -> Result<GenerateOutput, PipelineError> {
        let (width, height, plan) = validate_request(&self.unet_config, &self.vae_config, r, self.precision())?;
        // Shapes the last generation recorded after its first step (its VAE decode's); errors from
        // before this generation are not its own.
        self.tune_pending(&mut crate::gpu::uncaptured_errors(), &mut progress).await?;
        let gpu_errors_mark = crate::gpu::uncaptured_errors();
        let mut dump = Dump(dump.then(Vec::new));
        let mode = r.mode();
        let kind = match r.scheduler {
            Some(kind) => kind,
            None => self.default_scheduler()?,
        };
        let mut scheduler = schedulers::build(kind, &self.scheduler_config)?;
        scheduler.set_timesteps(r.steps)?;

        let conditioning = self.encode_prompts(r, [height, width], &mut dump).await?;
        let (timesteps, t_start) = get_timesteps(scheduler.as_mut(), r.steps, mode.strength());
        let mut rng = TorchRng::new(r.seed);
        let f = self.vae_scale_factor();
        let shape = [r.batch, self.vae_config.latent_channels, height / f, width / f];
        let latents = self.prepare_latents(&mode, shape, scheduler.as_ref(), t_start, &mut rng)?;
        dump.add("initial_latents", &latents).await?;
        let mask_channels = self.prepare_mask_latents(&mode, shape, conditioning.guided(), &mut rng);
        if !progress(Progress::Encoded).await {
            return Err(PipelineError::Cancelled);
        }

        let mut inputs = Denoise {
            conditioning: &conditioning,
            mask_channels: mask_channels.as_ref(),
            guidance: r.guidance,
            samples_per_call: plan.unet_samples_per_call,
            preview_every: r.preview_every,
            gpu_errors_mark,
        };
        let latents = self
            .denoise(&mut inputs, scheduler.as_mut(), &timesteps, latents, &mut rng, &mut dump, &mut progress)
            .await?;
        dump.add("final_latents", &latents).await?;
        if !progress(Progress::Denoised).await {
            return Err(PipelineError::Cancelled);
        }

        let images = self.decode_latents(latents, &mut dump).await?;
        progress(Progress::Decoded).await;
        let gpu_errors_mark = inputs.gpu_errors_mark;
        crate::gpu::errors_since(gpu_errors_mark).map_err(PipelineError::Gpu)?;
        let dump = dump.0.unwrap_or_default();
        Ok(GenerateOutput { images, width, height, scheduler: kind, dump, gpu_errors_mark })
    }

    /// diffusers' `encode_prompt` for the request (the prompt, and the negative prompt under guidance) and,
    /// for SDXL, `_get_add_time_ids`: the U-Net's context for every sample of a step, `[negative x batch,
    /// positive x batch]` under guidance.
    async fn encode_prompts(
        &self,
        r: &GenerateRequest,
        [height, width]: [usize; 2],
        dump: &mut Dump,
    ) -> Result<Conditioning, PipelineError> {
        let (b, cfg) = (r.batch, r.guidance > 1.0);
        let positive = self.encode_prompt(&r.prompt, r.prompt_2.as_deref(), r.prompt_weighting)?;
        let no_negative = r.negative_prompt.is_empty() && r.negative_prompt_2.as_deref().is_none_or(str::is_empty);
        let negative = if self.text_encoder_2.is_some() && self.force_zeros_for_empty_prompt && no_negative {
            // SDXL: no negative prompt is zeros, not the empty prompt's embeddings.
            PromptEmbeds {
                states: positive.states.zeros_like(),
                pooled: positive.pooled.as_ref().map(Tensor::zeros_like),
            }
        } else {
            self.encode_prompt(&r.negative_prompt, r.negative_prompt_2.as_deref(), r.prompt_weighting)?
        };
        dump.add("prompt_embeds", &positive.states).await?;
        dump.add("negative_prompt_embeds", &negative.states).await?;
        // SDXL's micro-conditioning: original size, crop top-left, target size (diffusers' `add_time_ids`).
        let added = |embeds: &PromptEmbeds| -> Option<TextTimeConditioning> {
            let pooled = embeds.pooled.clone()?;
            let [oh, ow] = r.original_size.unwrap_or([height, width]);
            let [th, tw] = r.target_size.unwrap_or([height, width]);
            let [top, left] = r.crops_coords_top_left;
            let ids = [oh, ow, top, left, th, tw].map(|v| v as f32);
            Some(TextTimeConditioning { text_embeds: pooled, time_ids: vec![ids] }.repeat(b))
        };
        let (added_positive, added_negative) = (added(&positive), added(&negative));
        if let (Some(p), Some(n)) = (&added_positive, &added_negative) {
            dump.add("pooled_prompt_embeds", &p.text_embeds).await?;
            dump.add("negative_pooled_prompt_embeds", &n.text_embeds).await?;
            // As the U-Net receives them: the negative rows first under guidance.
            let rows: Vec<[f32; 6]> =
                if cfg { [&n.time_ids[..], &p.time_ids[..]].concat() } else { p.time_ids.clone() };
            let ids = TensorData::new(rows.concat(), [rows.len(), 6]);
            dump.add("add_time_ids", &Tensor::<2>::from_data(ids, &self.device)).await?;
        }
        let (positive, negative) = (positive.states, negative.states);
        let repeat = |t: &Tensor<3>| Tensor::cat(vec![t.clone(); b], 0);
        let (context, added, guidance) = if !cfg {
            (repeat(&positive), added_positive, Guidance::None)
        } else if positive.dims()[1] != negative.dims()[1] {
            // Weighted prompts of different chunk counts: the two halves go through the U-Net apart, each
            // with its own context (A1111's default; padding one with empty chunks would change it).
            let apart = Guidance::Apart { negative: repeat(&negative), added_negative };
            (repeat(&positive), added_positive, apart)
        } else {
            let added = added_negative.zip(added_positive).map(|(n, p)| n.cat(p));
            (Tensor::cat(vec![repeat(&negative), repeat(&positive)], 0), added, Guidance::Together)
        };
        Ok(Conditioning { context, added, guidance, batch: b })
    }

    /// diffusers' `prepare_latents`: the initial noise, or for img2img and inpainting with strength below
    /// 1 the init image's latents noised to the first kept timestep (the VAE draws first, then the noise).
    fn prepare_latents(
        &self,
        mode: &Mode,
        shape: [usize; 4],
        scheduler: &dyn Scheduler,
        t_start: usize,
        rng: &mut TorchRng,
    ) -> Result<Tensor<4>, PipelineError> {
        let image_latents = match mode.init_image() {
            Some(image) if mode.strength() < 1.0 => {
                let latents = self.encode_image(self.preprocess(image), rng);
                Some(Tensor::cat(vec![latents; shape[0]], 0))
            }
            _ => None,
        };
        let noise = schedulers::randn(rng, shape, &self.device);
        Ok(match image_latents {
            Some(image_latents) => scheduler.add_noise(image_latents, noise, t_start)?,
            None => noise * scheduler.init_noise_sigma(),
        })
    }

    /// diffusers' `prepare_mask_latents` (inpainting only): the mask at latent size and the masked
    /// image's latents, the U-Net's extra input channels, for every sample of a step.
    fn prepare_mask_latents(
        &self,
        mode: &Mode,
        [b, _, lh, lw]: [usize; 4],
        guided: bool,
        rng: &mut TorchRng,
    ) -> Option<Tensor<4>> {
        let Mode::Inpaint { image, mask, .. } = mode else { return None };
        let mask = self.image_tensor(mask).narrow(1, 0, 1);
        // Binarised at 0.5 like diffusers' mask processor.
        let mask = mask.greater_equal_elem(0.5).float();
        let masked_image = self.preprocess(image) * mask.clone().lower_elem(0.5).float();
        let mask = upsample_nearest(mask, (lh, lw));
        let masked_latents = self.encode_image(masked_image, rng);
        let mask = Tensor::cat(vec![mask; b], 0);
        let masked_latents = Tensor::cat(vec![masked_latents; b], 0);
        let both = |t: Tensor<4>| if guided { Tensor::cat(vec![t.clone(), t], 0) } else { t };
        Some(Tensor::cat(vec![both(mask), both(masked_latents)], 1))
    }

    /// The denoising loop: each kept timestep through the U-Net (twice the batch under guidance), the
    /// guided noise prediction, one scheduler step; progress after each (and a preview when asked).
    #[allow(clippy::too_many_arguments)]
    async fn denoise(
        &self,
        d: &mut Denoise<'_>,
        scheduler: &mut dyn Scheduler,
        timesteps: &[f64],
        mut latents: Tensor<4>,
        rng: &mut TorchRng,
        dump: &mut Dump,
        progress: &mut impl AsyncFnMut(Progress) -> bool,
    ) -> Result<Tensor<4>, PipelineError> {
        let c = d.conditioning;
        let (b, per_call) = (c.batch, d.samples_per_call);
        let total = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let guided = c.guided();
            let input = if guided { Tensor::cat(vec![latents.clone(), latents.clone()], 0) } else { latents.clone() };
            let mut input = scheduler.scale_model_input(input)?;
            if let Some(extra) = d.mask_channels {
                input = Tensor::cat(vec![input, extra.clone()], 1);
            }
            let t = t as f32;
            let out = match &c.guidance {
                Guidance::Apart { negative, added_negative } => {
                    let (first, second) = (input.clone().narrow(0, 0, b), input.narrow(0, b, b));
                    let uncond =
                        self.unet.forward_in_calls(first, t, negative.clone(), added_negative.as_ref(), per_call);
                    let text = self.unet.forward_in_calls(second, t, c.context.clone(), c.added.as_ref(), per_call);
                    Tensor::cat(vec![uncond, text], 0)
                }
                _ => self.unet.forward_in_calls(input, t, c.context.clone(), c.added.as_ref(), per_call),
            };
            dump.add(format!("unet_out_{i:02}"), &out).await?;
            let noise_pred = if guided {
                let uncond = out.clone().narrow(0, 0, b);
                let text = out.narrow(0, b, b);
                uncond.clone() + (text - uncond) * d.guidance
            } else {
                out
            };
            latents = scheduler.step(noise_pred, latents, rng)?;
            dump.add(format!("latents_after_step_{i:02}"), &latents).await?;
            if !progress(Progress::Step { step: i + 1, total, latents: latents.clone() }).await {
                return Err(PipelineError::Cancelled);
            }
            // After the callback: in a browser it awaited the step before, and errors arrive as events.
            crate::gpu::errors_since(d.gpu_errors_mark).map_err(PipelineError::Gpu)?;
            // Every op of a step has been seen after the first: where this
            // device measures its kernels, the rest of the steps run the fastest.
            if i == 0 {
                self.tune_pending(&mut d.gpu_errors_mark, progress).await?;
            }
            let latent_c = latents.dims()[1];
            if d.preview_every > 0 && (i + 1) % d.preview_every == 0 && latent_c == 4 {
                let image = latent_preview(latents.clone().narrow(0, 0, 1));
                if !progress(Progress::Preview { step: i + 1, image }).await {
                    return Err(PipelineError::Cancelled);
                }
            }
        }
        Ok(latents)
    }

    /// Measures the convolutions and attentions recorded and not yet measured on this device
    /// ([`crate::kernels::tune`]: none where the adapter's kernels were chosen by hand), reporting
    /// [`Progress::Tune`] shape by shape (`false` cancels between shapes). A candidate during whose run
    /// a GPU error came is not picked, and those errors are the measuring's, not the generation's:
    /// `gpu_errors_mark` moves past them. Errors of the work before are checked first (in a browser
    /// the first progress call awaits the step before, whose errors arrive meanwhile).
    async fn tune_pending(
        &self,
        gpu_errors_mark: &mut u32,
        progress: &mut impl AsyncFnMut(Progress) -> bool,
    ) -> Result<(), PipelineError> {
        use crate::gpu::{errors_since, uncaptured_errors};
        let pending = crate::kernels::tune::pending_on(&self.device);
        let total = pending.len();
        if total == 0 {
            return Ok(());
        }
        if !progress(Progress::Tune { done: 0, total }).await {
            return Err(PipelineError::Cancelled);
        }
        errors_since(*gpu_errors_mark).map_err(PipelineError::Gpu)?;
        let before = uncaptured_errors();
        for (done, &shape) in pending.iter().enumerate() {
            if done > 0 && !progress(Progress::Tune { done, total }).await {
                *gpu_errors_mark += uncaptured_errors() - before;
                return Err(PipelineError::Cancelled);
            }
            // A shape whose reference could not be read (a lost device) stays pending.
            crate::models::tuning::measure_pending(shape, &self.device, uncaptured_errors).await;
        }
        *gpu_errors_mark += uncaptured_errors() - before;
        progress(Progress::Tune { done: total, total }).await;
        Ok(())
    }

    /// diffusers' `decode_latents`: the VAE decode (in f32 for an upcast VAE), as images
    /// `[batch, height, width, 3]` in [0, 1].
    async fn decode_latents(&self, latents: Tensor<4>, dump: &mut Dump) -> Result<Tensor<4>, PipelineError> {
        let scaling = self.vae_config.scaling_factor as f32;
        let latents = if self.vae_upcast { latents.cast(FloatDType::F32) } else { latents };
        let raw = self.vae_decoder.decode(latents / scaling, DEFAULT_BAND_BYTES);
        dump.add("vae_decoded_raw", &raw).await?;
        let images = (raw / 2.0 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 1]);
        dump.add("image", &images).await?;
        Ok(images)
    }

    /// An image in [0, 1] as the VAE's input in [-1, 1], `[1, channels, height, width]` (diffusers'
    /// image processor, without resizing: [`check_inputs`] requires the size).
    fn preprocess(&self, image: &Image) -> Tensor<4> {
        self.image_tensor(image) * 2.0 - 1.0
    }

    /// The VAE encoder's sampled latents, scaled (`latent_dist.sample() * scaling_factor`).
    fn encode_image(&self, image: Tensor<4>, rng: &mut TorchRng) -> Tensor<4> {
        let scaling = self.vae_config.scaling_factor as f32;
        if self.vae_upcast {
            // In f32, noise included, then back to the device's precision (diffusers' upcast VAE).
            let dist = self.vae_encoder.forward(image.cast(FloatDType::F32));
            let noise = schedulers::randn_f32(rng, dist.mean.dims(), &self.device);
            (dist.sample(noise) * scaling).cast(self.device.settings().float_dtype)
        } else {
            let dist = self.vae_encoder.forward(image);
            let noise = schedulers::randn(rng, dist.mean.dims(), &self.device);
            dist.sample(noise) * scaling
        }
    }
}

/// What a request generates from: diffusers' three Stable Diffusion pipelines.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    Txt2Img,
    Img2Img { image: &'a Image, strength: f32 },
    Inpaint { image: &'a Image, mask: &'a Image, strength: f32 },
}

impl Mode<'_> {
    fn init_image(&self) -> Option<&Image> {
        match self {
            Mode::Txt2Img => None,
            Mode::Img2Img { image, .. } | Mode::Inpaint { image, .. } => Some(image),
        }
    }

    /// How much of the schedule runs (1 for txt2img).
    fn strength(&self) -> f32 {
        match self {
            Mode::Txt2Img => 1.0,
            Mode::Img2Img { strength, .. } | Mode::Inpaint { strength, .. } => *strength,
        }
    }
}

impl GenerateRequest {
    /// The pipeline this request asks for (a mask without an init image is refused by `check_inputs`).
    pub fn mode(&self) -> Mode<'_> {
        match (&self.init_image, &self.mask) {
            (Some(image), Some(mask)) => Mode::Inpaint { image, mask, strength: self.strength },
            (Some(image), None) => Mode::Img2Img { image, strength: self.strength },
            (None, _) => Mode::Txt2Img,
        }
    }
}

/// How classifier-free guidance runs the U-Net.
enum Guidance {
    /// Guidance scale <= 1: the positive batch alone.
    None,
    /// Negative and positive in one batch (diffusers).
    Together,
    /// Weighted prompts of different lengths: each half with its own context.
    Apart { negative: Tensor<3>, added_negative: Option<TextTimeConditioning> },
}

/// The text (and SDXL's text-time) conditioning of every U-Net call of a generation.
struct Conditioning {
    /// `[negative x batch, positive x batch]` when guided together, else the positive batch's.
    context: Tensor<3>,
    /// SDXL's pooled embeddings and time ids, in the rows of `context`.
    added: Option<TextTimeConditioning>,
    guidance: Guidance,
    batch: usize,
}

impl Conditioning {
    /// Whether each step runs the negative half too.
    fn guided(&self) -> bool {
        !matches!(self.guidance, Guidance::None)
    }
}

/// The stage's fixed inputs beside the latents and the scheduler.
struct Denoise<'a> {
    conditioning: &'a Conditioning,
    mask_channels: Option<&'a Tensor<4>>,
    guidance: f32,
    samples_per_call: usize,
    preview_every: usize,
    gpu_errors_mark: u32,
}

/// diffusers' img2img `get_timesteps`: the timesteps kept by `strength`, and the index of the first.
fn get_timesteps(scheduler: &mut dyn Scheduler, steps: usize, strength: f32) -> (Vec<f64>, usize) {
    let init_timestep = ((steps as f64 * strength as f64) as usize).min(steps);
    let t_start = (steps - init_timestep) * scheduler.order();
    scheduler.set_begin_index(t_start);
    // Not empty: `check_inputs` requires at least one kept step.
    (scheduler.timesteps()[t_start..].to_vec(), t_start)
}

/// The pipeline's errors as the crate's (kept beside `PipelineError`: the error module imports nothing).
impl From<PipelineError> for crate::Error {
    fn from(err: PipelineError) -> Self {
        use crate::Error;
        use PipelineError as P;
        match err {
            P::Invalid(m) => Error::Invalid(m),
            P::Scheduler(e) => Error::Invalid(e.to_string()),
            P::Tokenizer(e) => Error::Invalid(e.to_string()),
            P::Prompt(e) => Error::Invalid(e.to_string()),
            P::Unsupported(m) => Error::Unsupported(m),
            P::Model(m) => Error::Model(m),
            P::Cancelled => Error::Cancelled,
            P::TooLarge(e) => Error::TooLarge(e.to_string()),
            P::Device(m) => Error::Readback(m),
            P::Gpu(e) => e,
        }
    }
}

/// The element type activations are computed in on `device` (its default float type).
pub fn device_precision(device: &Device) -> Precision {
    match Tensor::<1>::zeros([1], device).dtype() {
        DType::F16 | DType::BF16 => Precision::F16,
        _ => Precision::F32,
    }
}

/// How `r` (already validated, `width` x `height`) fits within the GPU buffer cap on a device computing
/// in `precision`.
pub fn plan_request(
    unet: &UNet2DConditionConfig,
    vae: &AutoencoderKLConfig,
    r: &GenerateRequest,
    width: usize,
    height: usize,
    precision: Precision,
) -> Result<MemoryPlan, TooLarge> {
    let guidance = r.guidance > 1.0;
    let workload = Workload { width, height, batch: r.batch, guidance, encode: r.init_image.is_some(), precision };
    memory::plan(unet, vae, &workload)
}

/// [`StableDiffusion::validate`] from the model's configs alone, so that a request is refused before its
/// weights are loaded; returns (width, height) and the memory plan.
pub fn validate_request(
    unet: &UNet2DConditionConfig,
    vae: &AutoencoderKLConfig,
    r: &GenerateRequest,
    precision: Precision,
) -> Result<(usize, usize, MemoryPlan), PipelineError> {
    let (w, h) = check_inputs(unet, vae, r)?;
    let plan = plan_request(unet, vae, r, w, h, precision)?;
    Ok((w, h, plan))
}

/// diffusers' `check_inputs` and what this model can do; returns (width, height).
fn check_inputs(
    unet: &UNet2DConditionConfig,
    vae: &AutoencoderKLConfig,
    r: &GenerateRequest,
) -> Result<(usize, usize), PipelineError> {
    let bad = |m: String| Err(PipelineError::Invalid(m));
    let f = vae.scale_factor();
    let default = unet.sample_size * f;
    let (iw, ih) = r.init_image.as_ref().map_or((default, default), |i| (i.width, i.height));
    let (w, h) = (r.width.unwrap_or(iw), r.height.unwrap_or(ih));
    if w == 0 || h == 0 || w % 8 != 0 || h % 8 != 0 {
        return bad(format!("width and height must be positive multiples of 8, got {w}x{h}"));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return bad(format!("{w}x{h} is larger than the {MAX_SIDE} px this app supports"));
    }
    if r.steps == 0 || r.steps > MAX_STEPS {
        return bad(format!("steps must be between 1 and {MAX_STEPS}, got {}", r.steps));
    }
    if !r.guidance.is_finite() || r.guidance < 0.0 || r.guidance > MAX_GUIDANCE {
        return bad(format!("guidance must be a number from 0 to {MAX_GUIDANCE}, got {}", r.guidance));
    }
    let sdxl = unet.has_text_time();
    let micro = r.original_size.is_some() || r.target_size.is_some() || r.crops_coords_top_left != [0, 0];
    if !sdxl && (r.prompt_2.is_some() || r.negative_prompt_2.is_some() || micro) {
        return Err(PipelineError::Unsupported(
            "prompt_2, negative_prompt_2, original_size, crop and target_size are SDXL's: this model has one text encoder"
                .into(),
        ));
    }
    for (name, size) in [("original_size", r.original_size), ("target_size", r.target_size)] {
        if let Some([h, w]) = size {
            if !(1..=MAX_CONDITIONING_SIDE).contains(&h) || !(1..=MAX_CONDITIONING_SIDE).contains(&w) {
                return bad(format!("{name} {w}x{h} is out of range (1 to {MAX_CONDITIONING_SIDE} px a side)"));
            }
        }
    }
    let [top, left] = r.crops_coords_top_left;
    if top > MAX_CONDITIONING_SIDE || left > MAX_CONDITIONING_SIDE {
        return bad(format!("crop top {top}, left {left} is out of range (0 to {MAX_CONDITIONING_SIDE} px)"));
    }
    if r.batch == 0 || r.batch > MAX_BATCH {
        return bad(format!("batch must be between 1 and {MAX_BATCH}, got {}", r.batch));
    }
    if !(0.0..=1.0).contains(&r.strength) || r.strength.is_nan() {
        return bad(format!("strength must be in [0, 1], got {}", r.strength));
    }
    if (r.steps as f64 * r.strength as f64) as usize == 0 {
        // diffusers keeps int(steps * strength) timesteps: none would leave nothing to denoise.
        return bad(format!("strength {} with {} steps leaves no denoising step", r.strength, r.steps));
    }
    if r.strength < 1.0 && r.init_image.is_none() {
        return bad("strength below 1 needs an init image".into());
    }
    if r.mask.is_some() && r.init_image.is_none() {
        return bad("a mask needs an init image".into());
    }
    if let Some(image) = &r.init_image {
        if (image.width, image.height) != (w, h) {
            return bad(format!(
                "the init image is {}x{}, the requested size {w}x{h} (images are not resized)",
                image.width, image.height
            ));
        }
    }
    if let (Some(mask), Some(image)) = (&r.mask, &r.init_image) {
        if (mask.width, mask.height) != (image.width, image.height) {
            return bad(format!(
                "the mask is {}x{}, the init image {}x{} (masks are not resized)",
                mask.width, mask.height, image.width, image.height
            ));
        }
    }
    // The U-Net takes the latents, and for inpainting the mask and the masked image's latents too
    // (4 and 9 channels with SD's VAE).
    let latent = vae.latent_channels;
    let inpainting = 2 * latent + 1;
    let wanted = if r.mask.is_some() { inpainting } else { latent };
    match (r.mask.is_some(), unet.in_channels) {
        (_, c) if c == wanted => {}
        (true, c) => {
            return Err(PipelineError::Unsupported(format!(
                "inpainting needs a {inpainting}-channel inpainting U-Net, this one takes {c}"
            )));
        }
        (false, c) if c == inpainting => {
            return Err(PipelineError::Unsupported(
                "this is an inpainting model: it needs --init-image and --mask".into(),
            ));
        }
        (false, c) => return Err(PipelineError::Unsupported(format!("a U-Net with {c} input channels"))),
    }
    Ok((w, h))
}
