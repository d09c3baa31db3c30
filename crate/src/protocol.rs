//! The typed messages between the page and the worker engine. `web/src/protocol.ts` mirrors these
//! types field for field; serde's `type` tag is the discriminant on both sides.

use serde::{Deserialize, Serialize};

use crate::gpu::GpuInfo;

/// A request from the page to the worker. Requests run one at a time in arrival order, except
/// [`Request::Cancel`], which the worker hands to the engine at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Request {
    /// Initialise the GPU (first time only) and report what it is.
    Status,
    /// Run the probe graph on the GPU and on the CPU (Flex) and compare.
    SelfTest,
    /// Make a model available offline: fetch its manifest (or use the stored one when offline),
    /// download what is missing into IndexedDB (resuming), verify, and answer [`Event::ModelReady`].
    #[serde(rename_all = "camelCase")]
    EnsureModel {
        /// Absolute URL of the `sd manifest` JSON; also the model's id.
        manifest_url: String,
        /// Weights variant; absent: fp16 where the model has it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<WeightsVariant>,
        /// Abort and resume a response that delivers no byte for this long (default 30 s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stall_timeout_ms: Option<u32>,
        /// Chunk size for files not yet started (default 4 MiB; tests use small ones).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chunk_bytes: Option<u32>,
        /// Origins (`https://host:port`) weights may come from besides the app's own; absent:
        /// the engine's default (`download::default_allowed_origins`: the production CSP's `connect-src`, plus
        /// loopback when the app is served from loopback). The manifest, its `base_url` and any redirect
        /// must all be allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allowed_origins: Option<Vec<String>>,
    },
    /// Fetch (or read back) a model's manifest and its small files (configs, tokenizer), and answer
    /// [`Event::ModelInfo`]: what the form needs before the weights are downloaded.
    #[serde(rename_all = "camelCase")]
    InspectModel {
        manifest_url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<WeightsVariant>,
        /// As in [`Request::EnsureModel`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allowed_origins: Option<Vec<String>>,
    },
    /// Generate with a stored model (loading it to the GPU first if another one is loaded).
    #[serde(rename_all = "camelCase")]
    Generate {
        /// The model's id (its manifest URL).
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<WeightsVariant>,
        settings: GenerateSettings,
    },
    /// Load a stored model onto the GPU now (a `Generate` loads it too); answers [`Event::ModelLoaded`].
    Load {
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<WeightsVariant>,
    },
    /// Stop the running download, load or generation at its next check (between two chunks, tensors
    /// or denoising steps); the request then ends with [`Event::Cancelled`].
    Cancel,
    /// List the stored models.
    ListModels,
    /// Delete a stored model (its files and chunks) and unload it.
    DeleteModel { id: String },
    /// Store a LoRA under `name` (what `<lora:name:weight>` and [`GenerateSettings::loras`] call it),
    /// from the page's `bytes` or fetched from `url` (an allowed origin, as for models); it is read as
    /// a LoRA first, and checked against `sha256` when given. Answers [`Event::LoraAdded`].
    #[serde(rename_all = "camelCase")]
    AddLora {
        name: String,
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        bytes: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allowed_origins: Option<Vec<String>>,
    },
    /// List the stored LoRAs.
    ListLoras,
    /// Delete a stored LoRA (a loaded model keeps it merged until the next generation).
    DeleteLora { name: String },
    /// Store a textual-inversion embedding for the trigger word `token` (A1111: the file's name), from
    /// `bytes` or `url`, as [`Request::AddLora`]. A generation whose prompts use the word gets it.
    /// Answers [`Event::EmbeddingAdded`].
    #[serde(rename_all = "camelCase")]
    AddEmbedding {
        token: String,
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        bytes: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allowed_origins: Option<Vec<String>>,
    },
    /// List the stored embeddings.
    ListEmbeddings,
    /// Delete a stored embedding.
    DeleteEmbedding { token: String },
    /// Testing aid: destroy the GPU device, as a driver reset would; the next request re-initialises.
    LoseDevice,
    /// Testing aid: panic in the engine, as a bug would, while holding the download lock of the model
    /// `hold_download_lock` when given. The engine answers `Error {code: "panic"}` and its worker ends
    /// (releasing every lock it held); the page starts a fresh one.
    #[serde(rename_all = "camelCase")]
    Panic {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold_download_lock: Option<String>,
    },
    /// Benchmark aid: run the stored model's U-Net `reps` times on the given inputs, each call timed
    /// including the readback of its output; answers [`Event::BenchUnet`].
    #[serde(rename_all = "camelCase")]
    BenchUnet {
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<WeightsVariant>,
        /// `[batch, in_channels, h, w]`
        sample: F32Tensor,
        timestep: f32,
        /// `[batch, tokens, cross_attention_dim]`
        encoder_hidden_states: F32Tensor,
        reps: u32,
    },
}

/// An f32 tensor on the wire: its shape and its values as little-endian bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct F32Tensor {
    pub shape: Vec<u32>,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl F32Tensor {
    pub fn from_values(shape: &[usize], values: &[f32]) -> Self {
        Self {
            shape: shape.iter().map(|&d| d as u32).collect(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values, when the byte count matches the shape.
    pub fn values(&self) -> Option<Vec<f32>> {
        let n: usize = self.shape.iter().map(|&d| d as usize).product();
        (self.data.len() == n * 4)
            .then(|| self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

/// Which weight files a model loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WeightsVariant {
    Fp16,
    Fp32,
}

impl From<WeightsVariant> for crate::weights::Variant {
    fn from(v: WeightsVariant) -> Self {
        match v {
            WeightsVariant::Fp16 => Self::Fp16,
            WeightsVariant::Fp32 => Self::Fp32,
        }
    }
}

/// An RGBA8 image from the page (`ImageData`), for img2img and inpainting masks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RgbaImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 4` bytes, row-major.
    #[serde(with = "serde_bytes")]
    pub rgba: Vec<u8>,
}

/// What to generate. Absent fields take diffusers' defaults (or the model's, for the scheduler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateSettings {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    #[serde(default = "default_steps")]
    pub steps: u32,
    #[serde(default = "default_guidance")]
    pub guidance: f32,
    /// Below 2^53 (JS numbers are exact up to there).
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// The CLI's scheduler names (`ddim`, `euler-a`, ...); absent: the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<RgbaImage>,
    /// White = repaint; the init image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<RgbaImage>,
    /// img2img / inpainting strength; absent: 0.8 for img2img, 1 for inpainting (diffusers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f32>,
    /// Send a [`Event::Preview`] every this many steps (0: never).
    #[serde(default)]
    pub preview_every: u32,
    /// AUTOMATIC1111's prompt syntax (`(word:1.3)`, `[word]`, `BREAK`, prompts past 75 tokens); false:
    /// diffusers' encoding. Plain prompts encode the same either way.
    #[serde(default = "default_prompt_weighting")]
    pub prompt_weighting: bool,
    /// SDXL: the second text encoder's prompt; absent: the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_2: Option<String>,
    /// SDXL: the second text encoder's negative prompt; absent: the negative prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt_2: Option<String>,
    /// SDXL micro-conditioning: the original image's `[width, height]`; absent: the image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<[u32; 2]>,
    /// SDXL micro-conditioning: the crop's top-left corner `[x, y]`; absent: `[0, 0]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<[u32; 2]>,
    /// SDXL micro-conditioning: the target `[width, height]`; absent: the image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_size: Option<[u32; 2]>,
    /// Stored LoRAs to merge, in order, with their weights; the prompt's `<lora:name:weight>` tags add
    /// to them (a tag's weight wins for a LoRA named in both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraWeight>,
}

/// A stored LoRA and the weight to merge it at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraWeight {
    pub name: String,
    pub weight: f32,
}

/// A stored textual-inversion embedding (also its record in the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingSummary {
    /// The trigger word.
    pub token: String,
    pub size: u64,
    /// Of the whole file; checked on every read from the store.
    pub sha256: String,
    /// AUTOMATIC1111's short hash (the PNG's `TI hashes`).
    pub short_hash: String,
    /// The file name or URL it came from.
    pub source: String,
    /// Vectors (tokens) it stands for, and their width.
    pub vectors: u32,
    pub width: u32,
}

/// A stored LoRA file (also its record in the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoraSummary {
    /// What the prompt's `<lora:name>` and the form call it.
    pub name: String,
    pub size: u64,
    /// Of the whole file; checked on every read from the store.
    pub sha256: String,
    /// AUTOMATIC1111's short hash (the PNG's `Lora hashes`).
    pub short_hash: String,
    /// The file name or URL it came from.
    pub source: String,
    /// Layers it adapts in each network.
    pub unet_layers: u32,
    pub text_encoder_layers: u32,
}

fn default_steps() -> u32 {
    crate::limits::DEFAULT_STEPS as u32
}
fn default_guidance() -> f32 {
    crate::limits::DEFAULT_GUIDANCE
}
fn default_batch() -> u32 {
    1
}
fn default_prompt_weighting() -> bool {
    true
}

/// What a generation is estimated to hold in GPU memory ([`crate::memory`]), worked out from the
/// model's configs and file sizes before anything is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryReport {
    /// The weights as the device holds them (f16 files are converted to f32 where it lacks shader-f16).
    pub weight_bytes: u64,
    /// Activations alive at the peak (estimated).
    pub activation_bytes: u64,
    /// The largest single buffer, kept to the 128 MiB cap.
    pub largest_buffer_bytes: u64,
    pub unet_samples_per_call: u32,
    /// `navigator.deviceMemory` in bytes, where the browser reports it (rounded down, clamped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_bytes: Option<u64>,
    /// Set when the estimate exceeds the reported memory: the risk and what to lower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A model's own defaults and download state, from its configs (answer to [`Request::InspectModel`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// The model's id (its manifest URL).
    pub id: String,
    /// Default image size: the U-Net's `sample_size` times the VAE's scale factor.
    pub width: u32,
    pub height: u32,
    /// The scheduler of `scheduler/scheduler_config.json`, as a CLI name (`ddim`, `euler`, ...).
    pub scheduler: String,
    /// A 9-channel inpainting U-Net (needs an init image and a mask).
    pub inpainting: bool,
    /// An SDXL model (two text encoders: `prompt2`, `negativePrompt2` and the size conditioning apply).
    #[serde(default)]
    pub sdxl: bool,
    /// Before any weight downloads: the GPU memory a generation at the default size (batch 1) is
    /// estimated to need on this device, and whether this device can run the model (`warning`); absent
    /// where there is no WebGPU device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
    /// The weights variant the selection uses.
    pub variant: WeightsVariant,
    /// Bytes of every file the variant needs, and how many of them are stored and verified.
    pub total_bytes: u64,
    pub stored_bytes: u64,
    /// Every needed file is stored and verified: generating needs no network.
    pub ready: bool,
    /// The manifest came from the store because the network failed.
    pub offline: bool,
    /// Steps and guidance to start from: the manifest's `recommended` (SD-Turbo: 1, 0), else diffusers'.
    pub steps: u32,
    pub guidance: f32,
}

/// What a phase of a long request has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Fetching weights: `done`/`total` in bytes stored of the model's selected files.
    Download,
    /// Fetching again the stored chunks found damaged (missing, short, or not matching their hash)
    /// while reading the model: `done`/`total` in bytes of those chunks.
    Repair,
    /// Loading to the GPU: `done`/`total` in bytes of weights uploaded.
    Load,
    /// Text (and image) encoding: 0/1, then 1/1.
    Encode,
    /// Denoising steps.
    Denoise,
    /// VAE decode: 0/1, then 1/1.
    Decode,
    /// Measuring the GPU's kernels for shapes it has not run before (once per device and shape;
    /// `crate::kernels::tune`): `done`/`total` in shapes.
    Tune,
}

/// A stored model, as [`Event::Models`] lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSummary {
    /// Its manifest URL.
    pub id: String,
    /// Bytes stored (complete and partial files).
    pub stored_bytes: u64,
    /// Bytes of every file the manifest lists.
    pub manifest_bytes: u64,
    /// Files stored complete and verified.
    pub complete_files: Vec<String>,
    /// Whether all files of some variant are complete (the model works offline).
    pub ready: bool,
}

/// What [`Request::EnsureModel`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadReport {
    /// The model's id (manifest URL).
    pub id: String,
    /// The files this variant needs, all now complete and verified.
    pub files: Vec<String>,
    /// Their total size.
    pub total_bytes: u64,
    /// Bytes received from the network during this request (0 when everything was stored).
    pub fetched_bytes: u64,
    /// Requests that failed and were resumed (network error, server error, stall, short body).
    pub retries: u32,
    /// Files whose content did not match the manifest's sha256 and were fetched again.
    pub corrupt_files: Vec<String>,
    /// Stored chunks found damaged after their file was verified, fetched again one by one.
    pub repaired_chunks: u32,
    /// Whether the manifest came from the store because the network failed.
    pub offline: bool,
}

/// An event from the worker to the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    /// Answer to [`Request::Status`].
    Status { gpu: GpuInfo },
    /// Answer to [`Request::SelfTest`].
    SelfTest { report: SelfTestReport },
    /// Progress of a download, load or generation.
    #[serde(rename_all = "camelCase")]
    Progress {
        phase: Phase,
        done: u64,
        total: u64,
        /// Download: bytes received from the network so far in this request (for the speed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        /// Download/load: the file being worked on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    /// Answer to [`Request::EnsureModel`].
    ModelReady { report: DownloadReport },
    /// Answer to [`Request::InspectModel`].
    ModelInfo { info: ModelInfo },
    /// A cheap live preview (latent resolution, RGBA8).
    Preview {
        step: u32,
        width: u32,
        height: u32,
        #[serde(with = "serde_bytes")]
        rgba: Vec<u8>,
    },
    /// One finished image (`index` of `count` in the batch); the request ends with the last one.
    #[serde(rename_all = "camelCase")]
    Result {
        /// PNG with the A1111 `parameters` text chunk.
        #[serde(with = "serde_bytes")]
        png: Vec<u8>,
        width: u32,
        height: u32,
        seed: u64,
        index: u32,
        count: u32,
        /// The settings as run (scheduler resolved; images left out).
        settings: GenerateSettings,
        /// Wall time of the whole request, including loading the model.
        elapsed_ms: f64,
    },
    /// A generation's GPU memory estimate, sent before the model is loaded.
    Memory { report: MemoryReport },
    /// Answer to [`Request::Load`].
    #[serde(rename_all = "camelCase")]
    ModelLoaded {
        id: String,
        /// Time to read the weights from IndexedDB and upload them (0 when already loaded).
        load_ms: f64,
        /// Size of the wasm heap (`WebAssembly.Memory`) afterwards: it never shrinks, so this is the
        /// peak so far.
        wasm_memory_bytes: u64,
    },
    /// Answer to [`Request::ListModels`].
    Models { models: Vec<ModelSummary> },
    /// Answer to [`Request::BenchUnet`]: wall time of each call (ms) and the last call's output.
    BenchUnet { ms: Vec<f64>, output: F32Tensor },
    /// Answer to [`Request::DeleteModel`].
    Deleted { id: String },
    /// Answer to [`Request::AddLora`].
    LoraAdded { lora: LoraSummary },
    /// Answer to [`Request::ListLoras`].
    Loras { loras: Vec<LoraSummary> },
    /// Answer to [`Request::DeleteLora`].
    LoraDeleted { name: String },
    /// Answer to [`Request::AddEmbedding`].
    EmbeddingAdded { embedding: EmbeddingSummary },
    /// Answer to [`Request::ListEmbeddings`].
    Embeddings { embeddings: Vec<EmbeddingSummary> },
    /// Answer to [`Request::DeleteEmbedding`].
    EmbeddingDeleted { token: String },
    /// During a generation: the LoRAs merged into the loaded model changed (to `loras`; none: every
    /// weight is back as loaded). `adapted_weights` weights are merged, their originals kept on the GPU
    /// (`kept_bytes`); the model was not read again.
    #[serde(rename_all = "camelCase")]
    LorasApplied { loras: Vec<LoraWeight>, adapted_weights: u32, kept_bytes: u64, ms: f64 },
    /// The running request stopped because of [`Request::Cancel`]; nothing half-done is kept as done.
    Cancelled { phase: Phase },
    /// A request failed; `code` is stable (see [`crate::Error::code`]), `message` is for people.
    /// `needed`/`available` (bytes) come with `quota`.
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        needed: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        available: Option<u64>,
    },
}

/// Result of [`Request::SelfTest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfTestReport {
    /// Shape of the probe's input.
    pub shape: Vec<usize>,
    /// Largest absolute difference between the GPU and the CPU output.
    pub max_abs_diff: f32,
    /// The tolerance the result is judged against.
    pub tolerance: f32,
    /// Whether `max_abs_diff <= tolerance`.
    pub passed: bool,
    /// Wall time of the GPU run including readback (first run: includes shader compilation).
    pub gpu_ms: f64,
    /// Wall time of the CPU run.
    pub cpu_ms: f64,
    /// Uncaptured GPU errors so far (see [`crate::gpu::uncaptured_errors`]).
    pub gpu_errors: u32,
}

impl From<crate::Error> for Event {
    fn from(err: crate::Error) -> Self {
        let (needed, available) = match &err {
            crate::Error::Quota { needed, available, .. } => (Some(*needed), Some(*available)),
            _ => (None, None),
        };
        Event::Error { code: err.code().to_string(), message: err.to_string(), needed, available }
    }
}

/// Tolerance of the self-test: the fixtures contract's f32 tolerance for a single model call.
pub const SELF_TEST_TOLERANCE: f32 = 1e-4;

/// The same on a device computing in f16 (about 10 f16 ulps at 1.0).
pub const SELF_TEST_TOLERANCE_F16: f32 = 1e-2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuLimits;
    use serde_json::Value;

    #[test]
    fn wire_format_is_tagged_camel_case() {
        let req: Request = serde_json::from_str(r#"{"type":"selfTest"}"#).unwrap();
        assert_eq!(req, Request::SelfTest);
        let ev = Event::from(crate::Error::NoGpu("none".into()));
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["code"], "no-webgpu");
        assert!(serde_json::from_str::<Request>(r#"{"type":"explode"}"#).is_err());
        // Absent settings take diffusers' defaults.
        let req: Request =
            serde_json::from_str(r#"{"type":"generate","model":"m","settings":{"prompt":"a cat"}}"#).unwrap();
        let Request::Generate { settings, .. } = req else { panic!() };
        assert_eq!((settings.steps, settings.guidance, settings.batch, settings.seed), (50, 7.5, 1, 0));
        let quota = Event::from(crate::Error::Quota { needed: 10, available: 3, detail: String::new() });
        let json = serde_json::to_value(&quota).unwrap();
        assert_eq!(
            (json["code"].as_str(), json["needed"].as_u64(), json["available"].as_u64()),
            (Some("quota"), Some(10), Some(3))
        );
    }

    /// Forces a sample for every variant: adding one without a sample does not compile.
    fn request_tag(r: &Request) -> &'static str {
        match r {
            Request::Status => "status",
            Request::SelfTest => "selfTest",
            Request::EnsureModel { .. } => "ensureModel",
            Request::InspectModel { .. } => "inspectModel",
            Request::Generate { .. } => "generate",
            Request::Load { .. } => "load",
            Request::Cancel => "cancel",
            Request::ListModels => "listModels",
            Request::DeleteModel { .. } => "deleteModel",
            Request::AddLora { .. } => "addLora",
            Request::ListLoras => "listLoras",
            Request::DeleteLora { .. } => "deleteLora",
            Request::AddEmbedding { .. } => "addEmbedding",
            Request::ListEmbeddings => "listEmbeddings",
            Request::DeleteEmbedding { .. } => "deleteEmbedding",
            Request::LoseDevice => "loseDevice",
            Request::Panic { .. } => "panic",
            Request::BenchUnet { .. } => "benchUnet",
        }
    }

    fn event_tag(e: &Event) -> &'static str {
        match e {
            Event::Status { .. } => "status",
            Event::SelfTest { .. } => "selfTest",
            Event::Progress { .. } => "progress",
            Event::ModelReady { .. } => "modelReady",
            Event::ModelInfo { .. } => "modelInfo",
            Event::Preview { .. } => "preview",
            Event::Result { .. } => "result",
            Event::ModelLoaded { .. } => "modelLoaded",
            Event::Memory { .. } => "memory",
            Event::Models { .. } => "models",
            Event::BenchUnet { .. } => "benchUnet",
            Event::Deleted { .. } => "deleted",
            Event::LoraAdded { .. } => "loraAdded",
            Event::Loras { .. } => "loras",
            Event::LoraDeleted { .. } => "loraDeleted",
            Event::EmbeddingAdded { .. } => "embeddingAdded",
            Event::Embeddings { .. } => "embeddings",
            Event::EmbeddingDeleted { .. } => "embeddingDeleted",
            Event::LorasApplied { .. } => "lorasApplied",
            Event::Cancelled { .. } => "cancelled",
            Event::Error { .. } => "error",
        }
    }

    fn samples() -> (Vec<Request>, Vec<Event>) {
        let image = RgbaImage { width: 1, height: 1, rgba: vec![1, 2, 3, 255] };
        let full = GenerateSettings {
            prompt: "a cat".into(),
            negative_prompt: "blurry".into(),
            steps: 2,
            guidance: 7.5,
            seed: 0,
            width: Some(64),
            height: Some(64),
            batch: 1,
            scheduler: Some("euler-a".into()),
            init_image: Some(image.clone()),
            mask: Some(image),
            strength: Some(0.75),
            preview_every: 1,
            prompt_weighting: false,
            prompt_2: Some("oil painting".into()),
            negative_prompt_2: Some("low quality".into()),
            original_size: Some([1024, 768]),
            crop: Some([0, 16]),
            target_size: Some([1024, 1024]),
            loras: vec![LoraWeight { name: "style".into(), weight: 0.8 }],
        };
        let minimal: GenerateSettings = serde_json::from_str(r#"{"prompt":""}"#).unwrap();
        let requests = vec![
            Request::Status,
            Request::SelfTest,
            Request::EnsureModel {
                manifest_url: "http://127.0.0.1:8080/models/tiny-sd/manifest.json".into(),
                variant: Some(WeightsVariant::Fp16),
                stall_timeout_ms: Some(1000),
                chunk_bytes: Some(65536),
                allowed_origins: Some(vec!["https://huggingface.co".into()]),
            },
            Request::EnsureModel {
                manifest_url: "m".into(),
                variant: None,
                stall_timeout_ms: None,
                chunk_bytes: None,
                allowed_origins: None,
            },
            Request::InspectModel {
                manifest_url: "m".into(),
                variant: Some(WeightsVariant::Fp16),
                allowed_origins: Some(vec!["http://127.0.0.1:9000".into()]),
            },
            Request::InspectModel { manifest_url: "m".into(), variant: None, allowed_origins: None },
            Request::Generate { model: "m".into(), variant: Some(WeightsVariant::Fp32), settings: full.clone() },
            Request::Generate { model: "m".into(), variant: None, settings: minimal },
            Request::Load { model: "m".into(), variant: Some(WeightsVariant::Fp16) },
            Request::Cancel,
            Request::ListModels,
            Request::DeleteModel { id: "m".into() },
            Request::AddLora {
                name: "style".into(),
                bytes: Some(vec![1, 2]),
                url: None,
                sha256: Some("ab".into()),
                allowed_origins: None,
            },
            Request::AddLora {
                name: "style".into(),
                bytes: None,
                url: Some("https://huggingface.co/u/r/resolve/main/style.safetensors".into()),
                sha256: None,
                allowed_origins: Some(vec!["https://huggingface.co".into()]),
            },
            Request::ListLoras,
            Request::DeleteLora { name: "style".into() },
            Request::AddEmbedding {
                token: "tiny-style".into(),
                bytes: Some(vec![3]),
                url: Some("https://huggingface.co/u/r/resolve/main/tiny-style.safetensors".into()),
                sha256: None,
                allowed_origins: None,
            },
            Request::ListEmbeddings,
            Request::DeleteEmbedding { token: "tiny-style".into() },
            Request::LoseDevice,
            Request::Panic { hold_download_lock: None },
            Request::Panic { hold_download_lock: Some("m".into()) },
            Request::BenchUnet {
                model: "m".into(),
                variant: Some(WeightsVariant::Fp32),
                sample: F32Tensor::from_values(&[1, 1, 1, 1], &[0.5]),
                timestep: 876.0,
                encoder_hidden_states: F32Tensor::from_values(&[1, 1, 1], &[1.0]),
                reps: 3,
            },
        ];
        let limits = GpuLimits {
            max_buffer_size: 1,
            max_storage_buffer_binding_size: 1,
            max_storage_buffers_per_shader_stage: 1,
            max_compute_workgroup_storage_size: 1,
            max_compute_invocations_per_workgroup: 1,
            max_compute_workgroup_size_x: 1,
            max_compute_workgroups_per_dimension: 1,
        };
        let gpu = GpuInfo {
            adapter: "a".into(),
            backend: "BrowserWebGpu".into(),
            device_type: "Cpu".into(),
            driver: String::new(),
            shader_f16: false,
            limits,
        };
        let mut events = vec![
            Event::Status { gpu },
            Event::SelfTest {
                report: SelfTestReport {
                    shape: vec![1, 2],
                    max_abs_diff: 0.0,
                    tolerance: 1e-4,
                    passed: true,
                    gpu_ms: 1.0,
                    cpu_ms: 1.0,
                    gpu_errors: 0,
                },
            },
            Event::Progress { phase: Phase::Download, done: 1, total: 2, bytes: Some(1), file: Some("unet/x".into()) },
            Event::Progress { phase: Phase::Denoise, done: 1, total: 2, bytes: None, file: None },
            Event::Progress { phase: Phase::Repair, done: 0, total: 4, bytes: Some(0), file: Some("unet/x".into()) },
            Event::ModelReady {
                report: DownloadReport {
                    id: "m".into(),
                    files: vec!["a".into()],
                    total_bytes: 1,
                    fetched_bytes: 1,
                    retries: 0,
                    corrupt_files: vec![],
                    repaired_chunks: 1,
                    offline: false,
                },
            },
            Event::ModelInfo {
                info: ModelInfo {
                    id: "m".into(),
                    width: 512,
                    height: 512,
                    scheduler: "pndm".into(),
                    inpainting: false,
                    sdxl: false,
                    memory: None,
                    variant: WeightsVariant::Fp16,
                    total_bytes: 2,
                    stored_bytes: 1,
                    ready: false,
                    offline: false,
                    steps: 1,
                    guidance: 0.0,
                },
            },
            Event::Preview { step: 1, width: 1, height: 1, rgba: vec![0, 0, 0, 255] },
            Event::Result {
                png: vec![137, 80],
                width: 64,
                height: 64,
                seed: 0,
                index: 0,
                count: 1,
                settings: GenerateSettings { init_image: None, mask: None, ..full },
                elapsed_ms: 1.5,
            },
            Event::Models {
                models: vec![ModelSummary {
                    id: "m".into(),
                    stored_bytes: 1,
                    manifest_bytes: 2,
                    complete_files: vec!["a".into()],
                    ready: false,
                }],
            },
            Event::ModelLoaded { id: "m".into(), load_ms: 1.5, wasm_memory_bytes: 65536 },
            Event::Memory {
                report: MemoryReport {
                    weight_bytes: 4 << 30,
                    activation_bytes: 1 << 28,
                    largest_buffer_bytes: 80 << 20,
                    unet_samples_per_call: 2,
                    device_memory_bytes: Some(4 << 30),
                    warning: Some("lower the size".into()),
                },
            },
            Event::Deleted { id: "m".into() },
            Event::LoraAdded {
                lora: LoraSummary {
                    name: "style".into(),
                    size: 4096,
                    sha256: "ab".into(),
                    short_hash: "0123456789ab".into(),
                    source: "style.safetensors".into(),
                    unet_layers: 12,
                    text_encoder_layers: 4,
                },
            },
            Event::Loras { loras: vec![] },
            Event::LoraDeleted { name: "style".into() },
            Event::EmbeddingAdded {
                embedding: EmbeddingSummary {
                    token: "tiny-style".into(),
                    size: 336,
                    sha256: "cd".into(),
                    short_hash: "0123456789ab".into(),
                    source: "a file".into(),
                    vectors: 2,
                    width: 32,
                },
            },
            Event::Embeddings { embeddings: vec![] },
            Event::EmbeddingDeleted { token: "tiny-style".into() },
            Event::LorasApplied {
                loras: vec![LoraWeight { name: "style".into(), weight: 0.5 }],
                adapted_weights: 16,
                kept_bytes: 1 << 20,
                ms: 12.5,
            },
            Event::BenchUnet { ms: vec![1.5], output: F32Tensor::from_values(&[1, 1, 1, 1], &[0.25]) },
            Event::Cancelled { phase: Phase::Denoise },
        ];
        for phase in [Phase::Load, Phase::Encode, Phase::Decode, Phase::Tune] {
            events.push(Event::Progress { phase, done: 0, total: 1, bytes: None, file: None });
        }
        use crate::Error as E;
        for err in [
            E::NoGpu(String::new()),
            E::GpuInit(String::new()),
            E::Readback(String::new()),
            E::BadRequest(String::new()),
            E::DeviceLost(String::new()),
            E::Invalid(String::new()),
            E::Unsupported(String::new()),
            E::Model(String::new()),
            E::NotStored(String::new()),
            E::Network(String::new()),
            E::Integrity(String::new()),
            E::Damaged(String::new()),
            E::Quota { needed: 2, available: 1, detail: String::new() },
            E::Storage(String::new()),
            E::TooLarge(String::new()),
            E::GpuOom(String::new()),
            E::GpuValidation(String::new()),
            E::Panic(String::new()),
            E::Cancelled,
        ] {
            events.push(err.into());
        }
        (requests, events)
    }

    /// A TypeScript literal of a serde value; the `serde_bytes` fields become `Uint8Array`s.
    fn ts(v: &Value, key: Option<&str>) -> String {
        match v {
            Value::Array(items) if matches!(key, Some("png" | "rgba" | "data" | "bytes")) => {
                format!("new Uint8Array({})", serde_json::to_string(items).unwrap())
            }
            Value::Array(items) => format!("[{}]", items.iter().map(|i| ts(i, None)).collect::<Vec<_>>().join(", ")),
            Value::Object(map) => format!(
                "{{ {} }}",
                map.iter().map(|(k, v)| format!("{k}: {}", ts(v, Some(k)))).collect::<Vec<_>>().join(", ")
            ),
            other => other.to_string(),
        }
    }

    /// The TS side must accept every message the Rust side produces (tsc checks the generated file in
    /// CI through `web/src/protocol-check.ts`), and cover every variant.
    #[test]
    fn typescript_samples_are_current() {
        let (requests, events) = samples();
        let tags: std::collections::BTreeSet<_> = requests.iter().map(request_tag).collect();
        assert_eq!(tags.len(), 18, "a sample for every request variant");
        let tags: std::collections::BTreeSet<_> = events.iter().map(event_tag).collect();
        assert_eq!(tags.len(), 21, "a sample for every event variant");
        for r in &requests {
            let back: Request = serde_json::from_value(serde_json::to_value(r).unwrap()).unwrap();
            assert_eq!(&back, r);
        }
        let lines = |items: Vec<Value>| items.iter().map(|v| format!("  {},\n", ts(v, None))).collect::<String>();
        let text = format!(
            "// Generated by the Rust test protocol::tests::typescript_samples_are_current: one of every message\n\
             // as serde writes it. Regenerate with UPDATE_PROTOCOL_SAMPLES=1 cargo test -p websd --lib protocol.\n\
             import type {{ Request, WorkerEvent }} from \"./protocol\";\n\n\
             export const requests = [\n{}] as const satisfies readonly Request[];\n\n\
             export const events = [\n{}] as const satisfies readonly WorkerEvent[];\n",
            lines(requests.iter().map(|r| serde_json::to_value(r).unwrap()).collect()),
            lines(events.iter().map(|e| serde_json::to_value(e).unwrap()).collect()),
        );
        check_generated("protocol-samples.gen.ts", &text, "protocol");
    }
}

/// A TypeScript file generated from Rust (`web/src/<file>`) must be `text`: rewritten when
/// `UPDATE_PROTOCOL_SAMPLES` is set, else compared (`module`: the tests' filter that regenerates it).
#[cfg(test)]
pub(crate) fn check_generated(file: &str, text: &str, module: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/src").join(file);
    if std::env::var_os("UPDATE_PROTOCOL_SAMPLES").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == text,
        "{} is stale: run UPDATE_PROTOCOL_SAMPLES=1 cargo test -p websd --lib {module}",
        path.display()
    );
}
