//! A GPU error during a generation ends it with a typed error, and the engine stays usable (native
//! wgpu; lavapipe on machines without a GPU). Its own test binary: the provoked errors are process-wide,
//! and the other wgpu tests require none.

mod common;

use websd::Error;
use websd::pipeline::{GenerateRequest, PipelineError, Progress, StableDiffusion};
use websd::weights::Variant;

fn request() -> GenerateRequest {
    GenerateRequest { prompt: "a photo of an astronaut riding a horse".into(), steps: 2, seed: 7, ..Default::default() }
}

fn validation_message(result: Result<impl std::fmt::Debug, PipelineError>) -> String {
    match result {
        Err(PipelineError::Gpu(Error::GpuValidation(message))) => message,
        other => panic!("expected a gpu-validation error, got {other:?}"),
    }
}

#[test]
fn a_gpu_error_ends_the_generation_with_its_type_and_the_next_one_is_clean() {
    let (device, info) = websd::gpu::wgpu_device().expect("a wgpu adapter (install mesa-vulkan-drivers)");
    eprintln!("wgpu adapter: {} ({})", info.adapter, info.backend);
    let model =
        StableDiffusion::load_dir(&common::fixtures_dir().join("tiny-sd"), Some(Variant::Fp32), &device).unwrap();
    let clean = model.generate(&request(), false, |_| true).unwrap().rgba8();
    assert_eq!(websd::gpu::uncaptured_errors(), 0);

    // During the denoising loop: the run stops at the step where the error came, with no image.
    let mut last_step = 0;
    let during = model.generate(&request(), false, |p| {
        if let Progress::Step { step, .. } = p {
            last_step = step;
            if step == 1 {
                websd::gpu::provoke_validation_error().unwrap();
            }
        }
        true
    });
    let message = validation_message(during);
    eprintln!("during the loop: gpu-validation: {message}");
    assert_eq!(last_step, 1, "the run went on after the error");
    assert_eq!(Error::GpuValidation(message).code(), "gpu-validation");

    // After the work was queued but before its readback: the readback refuses the result.
    let output = model.generate(&request(), false, |_| true).unwrap();
    websd::gpu::provoke_validation_error().unwrap();
    validation_message(pollster::block_on(output.rgba8_async()));

    // The engine is usable: the next run gives the clean image, bit for bit.
    let again = model.generate(&request(), false, |_| true).unwrap();
    assert_eq!(pollster::block_on(again.rgba8_async()).unwrap(), clean, "a run after the errors differs");
    assert_eq!(websd::gpu::uncaptured_errors(), 2);
}

#[test]
fn wgpu_errors_map_to_the_protocol_codes() {
    use burn::tensor::wgpu::wgpu;
    let source = || Box::new(std::io::Error::other("driver")) as Box<dyn std::error::Error + Send + Sync>;
    let oom = wgpu::Error::OutOfMemory { source: source() };
    let validation = wgpu::Error::Validation { source: source(), description: "bad binding".into() };
    let internal = wgpu::Error::Internal { source: source(), description: "too many".into() };
    assert_eq!(websd::gpu::classify(&oom).code(), "gpu-oom");
    assert_eq!(websd::gpu::classify(&validation), Error::GpuValidation("bad binding".into()));
    assert_eq!(websd::gpu::classify(&internal).code(), "gpu-oom");
}
