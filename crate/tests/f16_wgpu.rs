//! fp16 weights on a device that computes in f16 (native wgpu; lavapipe has `shader-f16`): the weights
//! stay f16 and the text encoder still agrees with the f32 reference to f16 precision. Its own test
//! binary, because a device's precision must be configured before its first tensor.

mod common;

use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use websd::models::clip::ClipTextConfig;
use websd::tokenizer::ClipTokenizer;

/// The shared wgpu device, computing in f16 (configured once, before any tensor: both tests use it).
fn f16_device() -> (burn::tensor::Device, websd::gpu::GpuInfo) {
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    let (mut device, info) = websd::gpu::wgpu_device().expect("a wgpu adapter (install mesa-vulkan-drivers)");
    assert!(info.shader_f16, "this check needs shader-f16: {info:?}");
    CONFIGURED.call_once(|| device.configure(FloatDType::F16).unwrap());
    (device, info)
}

/// The whole pipeline from the fp16 files with weights *and compute* in f16, as the browser engine runs
/// where WebGPU has `shader-f16`: within the browser tests' 2e-2 of diffusers (fp32). (Before GroupNorm
/// kept its statistics in f32, sums of squares overflowed f16 and the image was 0.59 off.)
#[test]
fn txt2img_in_f16_matches_diffusers() {
    use websd::pipeline::{GenerateRequest, StableDiffusion};
    let (device, info) = f16_device();
    let mut model = StableDiffusion::load_dir(
        &common::fixtures_dir().join("tiny-sd"),
        Some(websd::weights::Variant::Fp16),
        &device,
    )
    .unwrap();
    let run = common::Run::load("txt2img_ddim");
    let (config, kind) = common::run_scheduler(&run);
    model.scheduler_config = config;
    let request = GenerateRequest {
        prompt: run.meta("prompt").unwrap(),
        negative_prompt: run.meta("negative_prompt").unwrap(),
        steps: 8,
        seed: 0,
        scheduler: Some(kind),
        ..Default::default()
    };
    let out = model.generate(&request, false, |_| true).unwrap();
    assert_eq!(out.images.dtype(), DType::F16);
    let diff = common::max_diff(out.images.cast(FloatDType::F32), &run.f32("image").1);
    eprintln!("txt2img_ddim in f16 on {}: image max abs diff {diff:e} vs diffusers (fp32)", info.adapter);
    assert!(diff.is_finite() && diff <= 2e-2, "{diff}");
}

#[test]
fn fp16_weights_stay_f16_on_an_f16_device() {
    let (device, info) = f16_device();

    let root = common::fixtures_dir().join("tiny-sd/text_encoder");
    let config = ClipTextConfig::from_json(&std::fs::read_to_string(root.join("config.json")).unwrap()).unwrap();
    let model = config.load(std::fs::File::open(root.join("model.fp16.safetensors")).unwrap(), &device).unwrap();

    let tokenizer = ClipTokenizer::from_dir(&common::fixtures_dir().join("tiny-sd/tokenizer")).unwrap();
    let run = common::Run::load("txt2img_ddim");
    let ids: Vec<i64> = tokenizer.encode(&run.meta("prompt").unwrap()).unwrap().ids.iter().map(|&i| i as i64).collect();
    let out = model.forward(Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 77]), &device)).last_hidden_state;
    assert_eq!(out.dtype(), DType::F16);
    let got: Vec<f32> = out.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap();
    let (_, want) = run.f32("prompt_embeds");
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("CLIP in f16 on {}: max abs diff {diff:e} vs the f32 reference", info.adapter);
    // f16 compute against the f32 reference: 3.3e-3 measured on lavapipe; 10 f16 ulps at 1.0 is ~1e-2.
    assert!(diff.is_finite() && diff <= 1e-2, "{diff}");
}
