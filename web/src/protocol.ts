// The typed messages between the page and the worker. Mirrors crate/src/protocol.rs (serde, `type` tag,
// camelCase); change both together.

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

/** Page -> worker. */
export type Request = { type: "status" } | { type: "selfTest" };

/** Worker -> page. */
export type WorkerEvent =
  | { type: "ready" }
  | { type: "status"; gpu: GpuInfo }
  | { type: "selfTest"; report: SelfTestReport }
  | { type: "error"; code: ErrorCode; message: string };

/** Stable error codes (crate::Error::code, plus the ones only the worker script produces). */
export type ErrorCode = "no-webgpu" | "gpu-init" | "readback" | "bad-request" | "wasm-load" | "panic";
