//! A GPU error during a generation ends it with a typed error, and the engine stays usable (native
//! wgpu; lavapipe on machines without a GPU). Its own test binary: the provoked errors are process-wide,
//! and the other wgpu tests require none. Here too the pipeline measuring its kernels
//! (`websd::kernels::tune`), whose picks are process-wide as well: the tests take turns.

mod common;

use websd::Error;
use websd::pipeline::{GenerateRequest, PipelineError, Progress, StableDiffusion};
use websd::weights::Variant;

/// The tests here take turns: errors and kernel picks are process-wide.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // The same kernels in every run (a GPU nobody measured would measure them after a first step).
    websd::kernels::tune::set_recording(Some(false));
    let errors_before = websd::gpu::uncaptured_errors();
    let (device, info) = websd::gpu::wgpu_device().expect("a wgpu adapter (install mesa-vulkan-drivers)");
    eprintln!("wgpu adapter: {} ({})", info.adapter, info.backend);
    let model =
        StableDiffusion::load_dir(&common::fixtures_dir().join("tiny-sd"), Some(Variant::Fp32), &device).unwrap();
    let clean = model.generate(&request(), false, |_| true).unwrap().rgba8();
    assert_eq!(websd::gpu::uncaptured_errors(), errors_before);

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
    assert_eq!(websd::gpu::uncaptured_errors(), errors_before + 2);
}

/// Where a device measures its kernels (an adapter nobody measured; forced here): the shapes of the
/// first step are measured after it, with progress and a cancel between shapes, the rest of the steps
/// run the picks, the image stays the one the hand-made choice gives (within a level of 255), and
/// once everything is measured nothing is measured again and the images repeat bit for bit.
#[test]
fn the_pipeline_measures_each_shape_once_after_the_first_step() {
    use websd::kernels::tune;
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let errors_before = websd::gpu::uncaptured_errors();
    let (device, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let model =
        StableDiffusion::load_dir(&common::fixtures_dir().join("tiny-sd"), Some(Variant::Fp32), &device).unwrap();
    // Small and without guidance: shapes no other generation here runs.
    let r = GenerateRequest { width: Some(32), height: Some(32), guidance: 1.0, ..request() };
    tune::set_recording(Some(false));
    let plain = model.generate(&r, false, |_| true).unwrap().rgba8();
    assert!(tune::pending().is_empty(), "nothing recorded while not recording");

    // A GPU error from before (the other test provokes two) is not these generations' own.
    websd::gpu::provoke_validation_error().unwrap();
    let errors_before = errors_before + 1;
    tune::set_recording(Some(true));
    let before = tune::export().len();
    // A cancel while measuring stops there; what was measured stays.
    let cancelled = model.generate(&r, false, |p| !matches!(p, Progress::Tune { done: 2, .. }));
    assert!(matches!(cancelled, Err(PipelineError::Cancelled)), "{cancelled:?}");
    assert_eq!(tune::export().len(), before + 2);

    // The rest are measured before encoding, the decode's after the image.
    let mut events = Vec::new();
    let t = std::time::Instant::now();
    let tuned = model.generate(&r, false, |p| {
        match p {
            Progress::Tune { done, total } => events.push(format!("tune {done}/{total}")),
            Progress::Step { step, .. } => events.push(format!("step {step}")),
            Progress::Encoded => events.push("encoded".into()),
            _ => {}
        }
        true
    });
    let tuned = tuned.unwrap().rgba8();
    eprintln!("measured while generating in {:.1} s: {events:?}", t.elapsed().as_secs_f64());
    let total = events.iter().position(|e| e == "encoded").expect("encoded") - 1;
    assert!(total > 0 && events[0] == format!("tune 0/{total}") && events[total] == format!("tune {total}/{total}"));
    assert_eq!(&events[total + 1..], ["encoded", "step 1", "step 2"], "the U-Net's shapes are all measured");
    assert!(!tune::pending().is_empty(), "the VAE decode's shapes wait for the next generation");
    let worst = |a: &[Vec<u8>], b: &[Vec<u8>]| {
        a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
    };
    assert!(worst(&tuned, &plain) <= 1, "the picks moved the image by {}", worst(&tuned, &plain));

    let mut tunes = 0;
    let decoded = model.generate(&r, false, |p| {
        tunes += matches!(p, Progress::Tune { .. }) as usize;
        true
    });
    assert!(tunes > 0, "the decode's shapes measured");
    let decoded = decoded.unwrap().rgba8();
    assert!(tune::pending().is_empty());
    let again = model.generate(&r, false, |p| !matches!(p, Progress::Tune { .. })).unwrap().rgba8();
    assert_eq!(again, decoded, "with every shape measured, the image repeats");
    assert!(worst(&again, &plain) <= 1);
    tune::set_recording(None);
    assert_eq!(websd::gpu::uncaptured_errors(), errors_before, "no candidate raised a GPU error");
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
