//! The crate's error type. Every failure that can reach a user is one of these variants, so the worker
//! can turn it into an `Error {code, message}` event and the CLI into a one-line message.

/// Errors surfaced to callers (CLI, worker protocol, tests).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// No WebGPU / wgpu adapter could be acquired (browser without WebGPU, no Vulkan driver, ...).
    #[error("no GPU adapter available: {0}")]
    NoGpu(String),
    /// The GPU runtime could not be initialised for another reason (device request failed, ...).
    #[error("GPU initialisation failed: {0}")]
    GpuInit(String),
    /// Reading a tensor back from the device failed (device lost, allocation failure surfaced late).
    #[error("reading a tensor back from the device failed: {0}")]
    Readback(String),
    /// A request could not be understood.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The GPU device was lost (driver reset, another tab took the GPU, or `LoseDevice`). The engine
    /// re-initialises it on the next request.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// The settings are out of range or inconsistent (the message says which).
    #[error("{0}")]
    Invalid(String),
    /// The model needs something this app does not implement (yet).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The model's files are inconsistent (bad config, missing or mis-shaped tensors).
    #[error("the model is broken: {0}")]
    Model(String),
    /// The model is not stored (run `EnsureModel` first), or a file of it is missing.
    #[error("{0}")]
    NotStored(String),
    /// The download failed for good (after retries), or the manifest could not be fetched.
    #[error("network: {0}")]
    Network(String),
    /// A file kept failing its sha256 check.
    #[error("integrity: {0}")]
    Integrity(String),
    /// A stored chunk of a verified file went missing, came back short or does not match its hash;
    /// the engine fetches just those chunks again (and says so when it cannot, e.g. offline).
    #[error("a stored file is damaged: {0}")]
    Damaged(String),
    /// The origin's storage quota is too small for the model.
    #[error("not enough storage: {needed} bytes needed, {available} available{detail}")]
    Quota { needed: u64, available: u64, detail: String },
    /// IndexedDB failed for another reason.
    #[error("storage: {0}")]
    Storage(String),
    /// The request needs a GPU buffer over the cap that cannot be split; the message names what to lower.
    #[error("{0}")]
    TooLarge(String),
    /// The GPU ran out of memory during the work (wgpu's out-of-memory error).
    #[error("the GPU ran out of memory: {0}")]
    GpuOom(String),
    /// The GPU rejected a buffer or kernel (wgpu's validation error): the result would be wrong.
    #[error("the GPU rejected the work: {0}")]
    GpuValidation(String),
    /// The engine panicked (a bug): the request in flight failed and the worker is replaced by a
    /// fresh one (nothing stored is lost).
    #[error("the engine crashed and was restarted: {0}")]
    Panic(String),
    /// The request was cancelled (reported as a `Cancelled` event, not an error).
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// A stable, machine-readable code for the worker protocol's `Error {code}` event.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoGpu(_) => "no-webgpu",
            Error::GpuInit(_) => "gpu-init",
            Error::Readback(_) => "readback",
            Error::BadRequest(_) => "bad-request",
            Error::DeviceLost(_) => "device-lost",
            Error::Invalid(_) => "invalid",
            Error::Unsupported(_) => "unsupported",
            Error::Model(_) => "model",
            Error::NotStored(_) => "not-stored",
            Error::Network(_) => "network",
            Error::Integrity(_) => "integrity",
            Error::Damaged(_) => "damaged",
            Error::Quota { .. } => "quota",
            Error::Storage(_) => "storage",
            Error::TooLarge(_) => "too-large",
            Error::GpuOom(_) => "gpu-oom",
            Error::GpuValidation(_) => "gpu-validation",
            Error::Panic(_) => "panic",
            Error::Cancelled => "cancelled",
        }
    }
}
