//! The typed messages between the page and the worker engine. `web/src/protocol.ts` mirrors these
//! types field for field; serde's `type` tag is the discriminant on both sides.

use serde::{Deserialize, Serialize};

use crate::gpu::GpuInfo;

/// A request from the page to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Request {
    /// Initialise the GPU (first time only) and report what it is.
    Status,
    /// Run the probe graph on the GPU and on the CPU (Flex) and compare.
    SelfTest,
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

/// An event from the worker to the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    /// Sent once the worker's wasm module is initialised and ready for requests.
    Ready,
    /// Answer to [`Request::Status`].
    Status { gpu: GpuInfo },
    /// Answer to [`Request::SelfTest`].
    SelfTest { report: SelfTestReport },
    /// A request failed; `code` is stable (see [`crate::Error::code`]), `message` is for people.
    Error { code: String, message: String },
}

impl From<crate::Error> for Event {
    fn from(err: crate::Error) -> Self {
        Event::Error { code: err.code().to_string(), message: err.to_string() }
    }
}

/// Tolerance of the self-test: the fixtures contract's f32 tolerance for a single model call.
pub const SELF_TEST_TOLERANCE: f32 = 1e-4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_camel_case() {
        let req: Request = serde_json::from_str(r#"{"type":"selfTest"}"#).unwrap();
        assert_eq!(req, Request::SelfTest);
        let ev = Event::from(crate::Error::NoGpu("none".into()));
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["code"], "no-webgpu");
        assert!(serde_json::from_str::<Request>(r#"{"type":"explode"}"#).is_err());
    }
}
