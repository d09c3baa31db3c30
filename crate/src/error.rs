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
}

impl Error {
    /// A stable, machine-readable code for the worker protocol's `Error {code}` event.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoGpu(_) => "no-webgpu",
            Error::GpuInit(_) => "gpu-init",
            Error::Readback(_) => "readback",
            Error::BadRequest(_) => "bad-request",
        }
    }
}
