//! The whole pipeline against diffusers, seed for seed: every recorded run (txt2img with five
//! schedulers, img2img, inpainting) replayed from its settings and seed alone (no recorded noise), on
//! the Flex CPU device, from the fp32 and from the fp16 files.

use crate::common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{Run, fixtures_dir, max_diff};
use websd::pipeline::{GenerateRequest, Image, PipelineError, StableDiffusion};
use websd::weights::Variant;

fn load(model: &str, variant: Variant) -> StableDiffusion {
    StableDiffusion::load_dir(&fixtures_dir().join(model), Some(variant), &Device::flex()).unwrap()
}

fn image(run: &Run, name: &str, channels: usize) -> Image {
    let (shape, data) = run.f32(name);
    Image { width: shape[1], height: shape[0], channels, data }
}

/// The request diffusers ran, from the run's metadata.
fn request(run: &Run) -> GenerateRequest {
    let meta = |k: &str| run.meta(k);
    let mut r = GenerateRequest {
        prompt: meta("prompt").unwrap_or_else(|| "a photo of an astronaut riding a horse".into()),
        negative_prompt: meta("negative_prompt").unwrap_or_else(|| "blurry".into()),
        steps: meta("steps").unwrap().parse().unwrap(),
        guidance: meta("guidance_scale").map_or(7.5, |g| g.parse().unwrap()),
        seed: meta("seed").unwrap().parse().unwrap(),
        strength: meta("strength").map_or(1.0, |s| s.parse().unwrap()),
        ..Default::default()
    };
    if run.has("init_image") {
        r.init_image = Some(image(run, "init_image", 3));
    }
    if run.has("mask") {
        r.mask = Some(image(run, "mask", 1));
    }
    r
}

/// Replays a run; `reference` overrides the expected final latents and image (the fp16 files' reference).
fn replay(
    model: &mut StableDiffusion,
    name: &str,
    tolerance: f32,
    reference: Option<&Run>,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let run = Run::load(name);
    let mut r = request(&run);
    let (config, kind) = common::run_scheduler(&run);
    model.scheduler_config = config;
    r.scheduler = Some(kind);
    let out = model.generate(&r, true, |_| true).unwrap();
    let get = |n: &str| {
        let (_, shape, values) = out.dump.iter().find(|(k, _, _)| k == n).unwrap_or_else(|| panic!("no dump {n}"));
        Tensor::<4>::from_data(TensorData::new(values.clone(), shape.clone()), &Device::flex())
    };
    let initial = max_diff(get("initial_latents"), &run.f32("initial_latents").1);
    let (fin_ref, img_ref) = match reference {
        Some(fp16) => (fp16.f32(&format!("{name}_final_latents")).1, fp16.f32(&format!("{name}_image")).1),
        None => (run.f32("final_latents").1, run.f32("image").1),
    };
    let fin = max_diff(get("final_latents"), &fin_ref);
    let img = max_diff(out.images.clone(), &img_ref);
    let against = if reference.is_some() { "diffusers on the fp16 files" } else { "diffusers" };
    eprintln!("{name} vs {against}: initial latents {initial:e}, final latents {fin:e}, image {img:e}");
    // img2img's initial latents hold the VAE encoding, which the fp16 files change too (the recorded
    // ones are from the fp32 files); pure noise must match exactly either way.
    let initial_bound = if reference.is_some() && run.has("init_image") { tolerance } else { 1e-6 };
    assert!(initial <= initial_bound, "{name}: initial latents differ by {initial}");
    assert!(fin <= tolerance && img <= tolerance, "{name}: final latents {fin}, image {img} (> {tolerance})");
    assert_eq!(
        out.dump.iter().filter(|(k, _, _)| k.starts_with("unet_out_")).count(),
        run.names_with_prefix("unet_out_").len()
    );
    out.dump
}

const TXT2IMG: [&str; 5] = ["txt2img_ddim", "txt2img_euler", "txt2img_dpmpp2m", "txt2img_lcm", "txt2img_pndm"];

#[test]
fn every_run_from_the_fp32_files() {
    let mut model = load("tiny-sd", Variant::Fp32);
    for name in TXT2IMG.iter().chain(&["img2img_ddim"]) {
        replay(&mut model, name, 2e-3, None);
    }
    replay(&mut load("tiny-sd-inpaint", Variant::Fp32), "inpaint_ddim", 2e-3, None);
}

/// The fp16 files hold the fp32 weights rounded to f16, which moves diffusers' own final latents by up to
/// 3.6e-2 (LCM; latents reach 83 in magnitude) from the fp32 runs. So the reference here is diffusers run
/// on the same fp16 files (`tests/fixtures/fp16/`), with the 5e-3 bound.
#[test]
fn every_run_from_the_fp16_files() {
    let reference = Run::from_path(&fixtures_dir().join("fp16/fp16_reference.safetensors"));
    let mut model = load("tiny-sd", Variant::Fp16);
    for name in TXT2IMG.iter().chain(&["img2img_ddim"]) {
        let dump = replay(&mut model, name, 5e-3, Some(&reference));
        for embeds in ["prompt_embeds", "negative_prompt_embeds"] {
            let (_, _, ours) = dump.iter().find(|(k, _, _)| k == embeds).unwrap();
            let d = ours.iter().zip(&reference.f32(embeds).1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(d <= 1e-4, "{embeds} from the fp16 files differ by {d}");
        }
    }
}

/// A batch of 2 from one seed: diffusers draws the noise for the whole batch from one generator, so
/// image 0 differs from the batch-1 image and both images come from one [2, 4, h, w] draw.
#[test]
fn a_batch_draws_its_noise_at_once() {
    let model = load("tiny-sd", Variant::Fp32);
    let run = Run::load("txt2img_ddim");
    let mut r = request(&run);
    r.batch = 2;
    r.steps = 2;
    let out = model.generate(&r, true, |_| true).unwrap();
    let (_, shape, initial) = out.dump.iter().find(|(k, _, _)| k == "initial_latents").unwrap();
    assert_eq!(shape, &vec![2, 4, 32, 32]);
    let mut rng = websd::rng::TorchRng::new(0);
    assert_eq!(initial, &rng.randn(2 * 4 * 32 * 32));
    assert_eq!(out.images.dims(), [2, 64, 64, 3]);
}

#[test]
fn bad_requests_are_typed_errors() {
    let model = load("tiny-sd", Variant::Fp32);
    let ok = GenerateRequest { prompt: "x".into(), steps: 1, ..Default::default() };
    let cases = [
        GenerateRequest { width: Some(60), ..ok.clone() },
        GenerateRequest { steps: 0, ..ok.clone() },
        GenerateRequest { steps: 10000, ..ok.clone() },
        GenerateRequest { guidance: f32::NAN, ..ok.clone() },
        GenerateRequest { guidance: -1.0, ..ok.clone() },
        GenerateRequest { strength: 1.5, ..ok.clone() },
        GenerateRequest { strength: 0.5, ..ok.clone() },
        // int(steps * strength) = 0 kept steps.
        GenerateRequest { strength: 0.05, steps: 8, ..ok.clone() },
    ];
    for r in cases {
        assert!(matches!(model.validate(&r), Err(PipelineError::Invalid(_))), "{r:?}");
    }
    let mask = Image { width: 64, height: 64, channels: 1, data: vec![1.0; 64 * 64] };
    let init = Image { width: 64, height: 64, channels: 3, data: vec![0.5; 64 * 64 * 3] };
    let inpaint_on_plain = GenerateRequest { init_image: Some(init), mask: Some(mask), ..ok.clone() };
    assert!(matches!(model.validate(&inpaint_on_plain), Err(PipelineError::Unsupported(_))));
    // Previews every 2 steps, at latent resolution.
    let r = GenerateRequest { steps: 4, preview_every: 2, ..ok.clone() };
    let mut previews = Vec::new();
    model
        .generate(&r, false, |p| {
            if let websd::pipeline::Progress::Preview { step, image } = p {
                previews.push((step, image.dims()));
            }
            true
        })
        .unwrap();
    assert_eq!(previews, vec![(2, [1, 32, 32, 3]), (4, [1, 32, 32, 3])]);
    // Cancelling after the first step stops the run with a typed error.
    let r = GenerateRequest { steps: 4, ..ok };
    let mut steps = 0;
    let result = model.generate(&r, false, |p| {
        if matches!(p, websd::pipeline::Progress::Step { .. }) {
            steps += 1;
        }
        steps < 1
    });
    assert_eq!(result.unwrap_err(), PipelineError::Cancelled);
    assert_eq!(steps, 1);
}
