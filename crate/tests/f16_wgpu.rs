//! fp16 weights on a device that computes in f16 (native wgpu; lavapipe has `shader-f16`): the weights
//! stay f16 and the text encoder still agrees with the f32 reference to f16 precision. Its own test
//! binary, because a device's precision must be configured before its first tensor.

mod common;

use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use websd::models::clip::ClipTextConfig;
use websd::tokenizer::ClipTokenizer;

#[test]
fn fp16_weights_stay_f16_on_an_f16_device() {
    let (mut device, info) = websd::gpu::wgpu_device().expect("a wgpu adapter (install mesa-vulkan-drivers)");
    assert!(info.shader_f16, "this check needs shader-f16: {info:?}");
    device.configure(FloatDType::F16).unwrap();

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
