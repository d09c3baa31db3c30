// The typed messages between the page and the worker. Mirrors crate/src/protocol.rs (serde, `type` tag,
// camelCase); change both together. `web/src/protocol-samples.gen.ts` (written by the Rust test
// `protocol::tests::typescript_samples_are_current`) holds one of every message as Rust serialises it,
// and `protocol-check.ts` makes tsc prove that each sample is a valid `Request`/`WorkerEvent`.

/** Limits of the logical GPU device (crate::gpu::GpuLimits). */
export interface GpuLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  maxStorageBuffersPerShaderStage: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupSizeX: number;
  maxComputeWorkgroupsPerDimension: number;
}

/** What the adapter is and what it can do (crate::gpu::GpuInfo). */
export interface GpuInfo {
  adapter: string;
  backend: string;
  deviceType: string;
  driver: string;
  shaderF16: boolean;
  limits: GpuLimits;
}

/** GPU vs CPU comparison of the probe graph (crate::protocol::SelfTestReport). */
export interface SelfTestReport {
  shape: number[];
  maxAbsDiff: number;
  tolerance: number;
  passed: boolean;
  gpuMs: number;
  cpuMs: number;
  /** Uncaptured GPU errors so far (autotune candidates the adapter rejected, ...). */
  gpuErrors: number;
}

export type WeightsVariant = "fp16" | "fp32";

/** The CLI's scheduler names. */
export type SchedulerName = "ddpm" | "ddim" | "pndm" | "euler" | "euler-a" | "dpmpp-2m" | "dpmpp-2m-karras" | "lcm";

/** An RGBA8 image (ImageData's layout). */
export interface RgbaImage {
  width: number;
  height: number;
  rgba: Uint8Array;
}

/** crate::protocol::GenerateSettings; absent fields take diffusers' (or the model's) defaults. */
export interface GenerateSettings {
  prompt: string;
  negativePrompt?: string;
  steps?: number;
  guidance?: number;
  seed?: number;
  width?: number;
  height?: number;
  batch?: number;
  scheduler?: SchedulerName;
  initImage?: RgbaImage;
  mask?: RgbaImage;
  strength?: number;
  previewEvery?: number;
  /** AUTOMATIC1111's prompt syntax: `(word:1.3)`, `[word]`, `BREAK`, prompts past 75 tokens (default true). */
  promptWeighting?: boolean;
  /** SDXL: the second text encoder's prompt (default: the prompt). */
  prompt2?: string;
  /** SDXL: the second text encoder's negative prompt (default: the negative prompt). */
  negativePrompt2?: string;
  /** SDXL micro-conditioning: the original image's [width, height] (default: the image's size). */
  originalSize?: [number, number];
  /** SDXL micro-conditioning: the crop's top-left corner [x, y] (default [0, 0]). */
  crop?: [number, number];
  /** SDXL micro-conditioning: the target [width, height] (default: the image's size). */
  targetSize?: [number, number];
  /** Stored LoRAs to merge, in order; the prompt's `<lora:name:weight>` tags add to them (a tag's weight
   * wins for a LoRA named in both). */
  loras?: LoraWeight[];
}

/** crate::protocol::LoraWeight: a stored LoRA and the weight to merge it at. */
export interface LoraWeight {
  name: string;
  weight: number;
}

/** crate::protocol::EmbeddingSummary: a stored textual-inversion embedding. */
export interface EmbeddingSummary {
  /** The trigger word. */
  token: string;
  size: number;
  sha256: string;
  /** AUTOMATIC1111's short hash (the PNG's `TI hashes`). */
  shortHash: string;
  source: string;
  vectors: number;
  width: number;
}

/** crate::protocol::LoraSummary: a stored LoRA file. */
export interface LoraSummary {
  name: string;
  size: number;
  /** Of the whole file; checked on every read from the store. */
  sha256: string;
  /** AUTOMATIC1111's short hash (the PNG's `Lora hashes`). */
  shortHash: string;
  /** The file name or URL it came from. */
  source: string;
  unetLayers: number;
  textEncoderLayers: number;
}

export type Phase = "download" | "repair" | "load" | "encode" | "denoise" | "decode" | "tune";

/** crate::protocol::ModelSummary */
export interface ModelSummary {
  id: string;
  storedBytes: number;
  manifestBytes: number;
  completeFiles: string[];
  ready: boolean;
}

/** crate::protocol::DownloadReport */
export interface DownloadReport {
  id: string;
  files: string[];
  totalBytes: number;
  fetchedBytes: number;
  retries: number;
  corruptFiles: string[];
  /** Stored chunks found damaged when read and fetched again one by one. */
  repairedChunks: number;
  offline: boolean;
}

/** crate::protocol::ModelInfo: a model's own defaults and how much of it is stored. */
export interface ModelInfo {
  id: string;
  width: number;
  height: number;
  scheduler: SchedulerName;
  inpainting: boolean;
  /** Two text encoders: prompt2, negativePrompt2 and the size conditioning apply. */
  sdxl: boolean;
  /** Before any weight downloads: the estimate at the default size on this GPU, and whether it can run
   * the model (`warning`); absent without WebGPU. */
  memory?: MemoryReport;
  variant: WeightsVariant;
  totalBytes: number;
  storedBytes: number;
  ready: boolean;
  offline: boolean;
  /** The manifest's recommended steps and guidance, else diffusers' (50, 7.5). */
  steps: number;
  guidance: number;
}

/** crate::protocol::MemoryReport: a generation's GPU memory estimate, sent before the model loads. */
export interface MemoryReport {
  weightBytes: number;
  activationBytes: number;
  largestBufferBytes: number;
  unetSamplesPerCall: number;
  /** navigator.deviceMemory in bytes, where the browser reports it (rounded down, clamped). */
  deviceMemoryBytes?: number;
  /** Set when the estimate exceeds the reported memory: the risk and what to lower. */
  warning?: string;
}

/** crate::protocol::F32Tensor: a shape and its f32 values as little-endian bytes. */
export interface F32Tensor {
  shape: number[];
  data: Uint8Array;
}

/** Page -> worker. */
export type Request =
  | { type: "status" }
  | { type: "selfTest" }
  | {
      type: "ensureModel";
      manifestUrl: string;
      variant?: WeightsVariant;
      stallTimeoutMs?: number;
      chunkBytes?: number;
      /** Origins weights may come from besides the app's own (absent: the engine's default list). */
      allowedOrigins?: string[];
    }
  | { type: "inspectModel"; manifestUrl: string; variant?: WeightsVariant; allowedOrigins?: string[] }
  | { type: "generate"; model: string; variant?: WeightsVariant; settings: GenerateSettings }
  | { type: "load"; model: string; variant?: WeightsVariant }
  | { type: "cancel" }
  | { type: "listModels" }
  | { type: "deleteModel"; id: string }
  | {
      /** Store a LoRA under `name`, from `bytes` or from `url` (an allowed origin); read as a LoRA first,
       * checked against `sha256` when given. */
      type: "addLora";
      name: string;
      bytes?: Uint8Array;
      url?: string;
      sha256?: string;
      allowedOrigins?: string[];
    }
  | { type: "listLoras" }
  | { type: "deleteLora"; name: string }
  /** Store an embedding for the trigger word `token`, as addLora; prompts that use the word get it. */
  | { type: "addEmbedding"; token: string; bytes?: Uint8Array; url?: string; sha256?: string; allowedOrigins?: string[] }
  | { type: "listEmbeddings" }
  | { type: "deleteEmbedding"; token: string }
  | { type: "loseDevice" }
  /** Testing aid: a real panic in the engine (inside the model's download lock when given). */
  | { type: "panic"; holdDownloadLock?: string }
  | {
      /** Benchmark aid: the U-Net alone, `reps` timed calls (each including its output's readback). */
      type: "benchUnet";
      model: string;
      variant?: WeightsVariant;
      sample: F32Tensor;
      timestep: number;
      encoderHiddenStates: F32Tensor;
      reps: number;
    };

/** Stable error codes (crate::Error::code, plus the ones only the worker script produces). */
export type ErrorCode =
  | "no-webgpu"
  | "gpu-init"
  | "readback"
  | "bad-request"
  | "device-lost"
  | "invalid"
  | "unsupported"
  | "model"
  | "not-stored"
  | "network"
  | "integrity"
  | "damaged"
  | "quota"
  | "storage"
  | "too-large"
  | "gpu-oom"
  | "gpu-validation"
  | "cancelled"
  | "wasm-load"
  | "panic";

/** Worker -> page. */
export type WorkerEvent =
  /** From the worker script itself (not the engine): the wasm is instantiated. */
  | { type: "ready" }
  | { type: "status"; gpu: GpuInfo }
  | { type: "selfTest"; report: SelfTestReport }
  | { type: "progress"; phase: Phase; done: number; total: number; bytes?: number; file?: string }
  | { type: "modelReady"; report: DownloadReport }
  | { type: "modelInfo"; info: ModelInfo }
  | { type: "preview"; step: number; width: number; height: number; rgba: Uint8Array }
  | {
      type: "result";
      png: Uint8Array;
      width: number;
      height: number;
      seed: number;
      index: number;
      count: number;
      settings: GenerateSettings;
      elapsedMs: number;
    }
  | { type: "modelLoaded"; id: string; loadMs: number; wasmMemoryBytes: number }
  | { type: "memory"; report: MemoryReport }
  | { type: "models"; models: ModelSummary[] }
  | { type: "benchUnet"; ms: number[]; output: F32Tensor }
  | { type: "deleted"; id: string }
  | { type: "loraAdded"; lora: LoraSummary }
  | { type: "loras"; loras: LoraSummary[] }
  | { type: "loraDeleted"; name: string }
  | { type: "embeddingAdded"; embedding: EmbeddingSummary }
  | { type: "embeddings"; embeddings: EmbeddingSummary[] }
  | { type: "embeddingDeleted"; token: string }
  /** During a generation: the merged LoRAs changed; their originals are kept on the GPU (`keptBytes`). */
  | { type: "lorasApplied"; loras: LoraWeight[]; adaptedWeights: number; keptBytes: number; ms: number }
  | { type: "cancelled"; phase: Phase }
  | { type: "error"; code: ErrorCode; message: string; needed?: number; available?: number };

/** Page -> worker on the wire: a request with the id its events will carry (engine.ts). Without one a
 * request's events are untagged and it gets no `end` (a bare client then matches answers by order).
 * `cancel` with a request id cancels that request alone; without one, everything running and queued. */
export type RequestMessage = Request & { requestId?: number };

/** Worker -> page on the wire: an event with the id of the request it belongs to (absent for `ready` and
 * for untagged requests), and `end` after the last event of a request that had an id. */
export type WorkerMessage = (WorkerEvent & { requestId?: number }) | { type: "end"; requestId: number };
