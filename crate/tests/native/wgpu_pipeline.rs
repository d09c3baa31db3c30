//! The tiny model on native wgpu (lavapipe on machines without a GPU): the U-Net's recorded calls within
//! 1e-3 and whole pipelines within 2e-2 of diffusers, with no device error.

use crate::common;

use burn::tensor::{Tensor, TensorData};
use common::{Run, fixtures_dir, max_diff};
use websd::pipeline::{GenerateRequest, Image, StableDiffusion};
use websd::weights::Variant;

#[test]
fn tiny_model_on_wgpu_matches_diffusers() {
    let (device, info) = websd::gpu::wgpu_device().expect("a wgpu adapter (install mesa-vulkan-drivers)");
    eprintln!("wgpu adapter: {} ({})", info.adapter, info.backend);

    // Every U-Net call of one run.
    let unet = common::unet("tiny-sd", "diffusion_pytorch_model.safetensors", &device);
    let run = Run::load("txt2img_euler");
    let (shape, context) = run.f32("unet_in_encoder_hidden_states");
    let context = Tensor::<3>::from_data(TensorData::new(context, [shape[0], shape[1], shape[2]]), &device);
    let mut worst = 0f32;
    for n in 0..run.names_with_prefix("unet_out_").len() {
        let sample = run.tensor4(&format!("unet_in_sample_{n:02}"), &device);
        let t = run.f32(&format!("unet_in_timestep_{n:02}")).1[0];
        worst = worst
            .max(max_diff(unet.forward(sample, t, context.clone(), None), &run.f32(&format!("unet_out_{n:02}")).1));
    }
    eprintln!("U-Net on wgpu, txt2img_euler's 8 calls: max abs diff {worst:e}");
    assert!(worst <= 1e-3, "U-Net on wgpu differs by {worst}");

    // Whole runs from the seed: a deterministic sampler, the stochastic one and img2img (the other
    // schedulers are the same pipeline code; all of them run on Flex in pipeline_fixtures).
    let mut model = StableDiffusion::load_dir(&fixtures_dir().join("tiny-sd"), Some(Variant::Fp32), &device).unwrap();
    for name in ["txt2img_ddim", "txt2img_lcm", "img2img_ddim"] {
        let run = Run::load(name);
        let (config, kind) = common::run_scheduler(&run);
        model.scheduler_config = config;
        let (shape, data) = if run.has("init_image") { run.f32("init_image") } else { (vec![], vec![]) };
        let request = GenerateRequest {
            prompt: "a photo of an astronaut riding a horse".into(),
            negative_prompt: "blurry".into(),
            steps: 8,
            seed: 0,
            scheduler: Some(kind),
            strength: run.meta("strength").map_or(1.0, |s| s.parse().unwrap()),
            init_image: (!data.is_empty()).then(|| Image { width: shape[1], height: shape[0], channels: 3, data }),
            ..Default::default()
        };
        let out = model.generate(&request, false, |_| true).unwrap();
        let diff = max_diff(out.images, &run.f32("image").1);
        eprintln!("{name} on wgpu: image max abs diff {diff:e}");
        assert!(diff <= 2e-2, "{name} on wgpu differs by {diff}");
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// GroupNorm over long groups on wgpu: `[1, 960, 64, 64]` is the U-Net's last up block at 512 px (122,880
/// values per group), where burn's own GroupNorm returned garbage on lavapipe without any device error.
#[test]
fn group_norm_over_long_groups_on_wgpu() {
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Device, Distribution};
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    let x: Vec<f32> = Tensor::<4>::random([1, 960, 64, 64], Distribution::Normal(0.5, 2.0), &cpu)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let run = |device: &Device| {
        let norm = GroupNormConfig::new(32, 960).with_epsilon(1e-5).init(device);
        let x = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 960, 64, 64]), device);
        websd::models::group_norm(&norm, x).into_data().try_to_vec::<f32>().unwrap()
    };
    let (on_gpu, on_cpu) = (run(&gpu), run(&cpu));
    let diff = on_gpu.iter().zip(&on_cpu).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("GroupNorm [1, 960, 64, 64] on wgpu vs Flex: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "GroupNorm on wgpu differs by {diff}");
}
