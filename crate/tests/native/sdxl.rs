//! SDXL (issue 21): the tiny SDXL models against diffusers' runs on them (`tests/fixtures/sdxl-runs/`,
//! `make_sdxl.py`): txt2img with Euler, SDXL-Turbo's 1 step of Euler a (trailing) without guidance,
//! img2img with `prompt_2` and no negative prompt (zeros), 9-channel inpainting with `negative_prompt_2`.
//! Each is replayed from its settings and seed alone, through the library and through `sd generate`.

use crate::common::{Run, fixtures_dir};

use burn::tensor::Device;
use websd::pipeline::{GenerateRequest, Image, PipelineError, StableDiffusion};

/// (run, model folder)
const RUNS: [(&str, &str); 4] = [
    ("txt2img_euler", "tiny-sdxl"),
    ("turbo_1step", "tiny-sdxl-turbo"),
    ("img2img_euler", "tiny-sdxl"),
    ("inpaint_euler", "tiny-sdxl-inpaint"),
];

fn run(name: &str) -> Run {
    Run::from_path(&fixtures_dir().join("sdxl-runs").join(name).join("tensors.safetensors"))
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sizes differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `Some` unless the run's metadata says "" (diffusers' `None`).
fn optional(run: &Run, key: &str) -> Option<String> {
    run.meta(key).filter(|v| !v.is_empty())
}

fn image(run: &Run, name: &str, channels: usize) -> Image {
    let (shape, data) = run.f32(name);
    Image { width: shape[1], height: shape[0], channels, data }
}

fn request(run: &Run) -> GenerateRequest {
    GenerateRequest {
        prompt: run.meta("prompt").unwrap(),
        prompt_2: optional(run, "prompt_2"),
        negative_prompt: run.meta("negative_prompt").unwrap(),
        negative_prompt_2: optional(run, "negative_prompt_2"),
        steps: run.meta("steps").unwrap().parse().unwrap(),
        guidance: run.meta("guidance_scale").unwrap().parse().unwrap(),
        seed: run.meta("seed").unwrap().parse().unwrap(),
        strength: run.meta("strength").unwrap().parse().unwrap(),
        init_image: run.has("init_image").then(|| image(run, "init_image", 3)),
        mask: run.has("mask").then(|| image(run, "mask", 1)),
        ..Default::default()
    }
}

/// Our dump of a run against diffusers': text conditioning within 1e-4, `time_ids` exactly, the initial
/// latents within 1e-6, final latents and image within 2e-3, as many U-Net calls.
fn check(name: &str, dump: &[(String, Vec<usize>, Vec<f32>)]) {
    let reference = run(name);
    let ours = |n: &str| &dump.iter().find(|(k, _, _)| k == n).unwrap_or_else(|| panic!("{name}: no dump {n}")).2;
    let mut text = vec!["prompt_embeds", "pooled_prompt_embeds"];
    if reference.has("negative_prompt_embeds") {
        text.extend(["negative_prompt_embeds", "negative_pooled_prompt_embeds"]);
    }
    let mut worst_text = 0.0f32;
    for embeds in text {
        let d = max_abs(ours(embeds), &reference.f32(embeds).1);
        assert!(d <= 1e-4, "{name}: {embeds} differ by {d}");
        worst_text = worst_text.max(d);
    }
    assert_eq!(ours("add_time_ids")[..], reference.f32("time_ids").1[..], "{name}: add_time_ids");
    let initial = max_abs(ours("initial_latents"), &reference.f32("initial_latents").1);
    let fin = max_abs(ours("final_latents"), &reference.f32("final_latents").1);
    let img = max_abs(ours("image"), &reference.f32("image").1);
    eprintln!(
        "{name} vs diffusers: text conditioning {worst_text:e}, initial latents {initial:e}, final latents {fin:e}, image {img:e}"
    );
    assert!(initial <= 1e-6, "{name}: initial latents differ by {initial}");
    assert!(fin <= 2e-3 && img <= 2e-3, "{name}: final latents {fin}, image {img}");
    let calls = dump.iter().filter(|(k, _, _)| k.starts_with("unet_out_")).count();
    assert_eq!(calls.to_string(), reference.meta("unet_calls").unwrap(), "{name}: U-Net calls");
}

#[test]
fn every_sdxl_run_from_its_settings_and_seed() {
    for (name, model) in RUNS {
        let sd = StableDiffusion::load_dir(&fixtures_dir().join(model), None, &Device::flex()).unwrap();
        assert!(sd.text_encoder_2.is_some() && sd.force_zeros_for_empty_prompt, "{model} is SDXL");
        let out = sd.generate(&request(&run(name)), true, |_| true).unwrap();
        check(name, &out.dump);
    }
}

/// The same runs through `sd generate`, with the SDXL flags where the run used them.
#[test]
fn every_sdxl_run_through_the_cli() {
    let dir = std::env::temp_dir().join(format!("websd-sdxl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, model) in RUNS {
        let reference = run(name);
        let r = request(&reference);
        let (out, dump) = (dir.join(format!("{name}.png")), dir.join(format!("{name}.safetensors")));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sd"));
        cmd.args(["generate", "--model", fixtures_dir().join(model).to_str().unwrap(), "--prompt", &r.prompt]);
        cmd.args(["--negative", &r.negative_prompt, "--steps", &r.steps.to_string()]);
        cmd.args(["--guidance", &r.guidance.to_string(), "--seed", "0"]);
        cmd.args(["--out", out.to_str().unwrap(), "--dump", dump.to_str().unwrap()]);
        if let Some(p) = &r.prompt_2 {
            cmd.args(["--prompt-2", p]);
        }
        if let Some(n) = &r.negative_prompt_2 {
            cmd.args(["--negative-2", n]);
        }
        for (flag, picture) in [("--init-image", &r.init_image), ("--mask", &r.mask)] {
            let Some(picture) = picture else { continue };
            let path = dir.join(format!("{name}{flag}.png"));
            let rgba: Vec<u8> = picture
                .data
                .chunks(picture.channels)
                .flat_map(|p| {
                    let v = |i: usize| (p[i.min(p.len() - 1)] * 255.0).round() as u8;
                    [v(0), v(1), v(2), 255]
                })
                .collect();
            websd::image::write_png(&path, picture.width, picture.height, &rgba, "").unwrap();
            cmd.args([flag, path.to_str().unwrap()]);
        }
        if r.init_image.is_some() {
            cmd.args(["--strength", &r.strength.to_string()]);
        }
        let result = cmd.output().unwrap();
        assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
        let dumped = Run::from_path(&dump);
        let names = dumped.names_with_prefix("");
        let dump: Vec<_> = names.iter().map(|n| (n.clone(), vec![], dumped.f32(n).1)).collect();
        check(name, &dump);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The micro-conditioning flags reach the U-Net as diffusers' `time_ids` ([h, w, top, left, h, w]) and
/// change the image; SD 1.x models refuse them and `prompt_2` instead of ignoring them.
#[test]
fn micro_conditioning_and_sd_models_refusing_sdxl_settings() {
    let sd = StableDiffusion::load_dir(&fixtures_dir().join("tiny-sdxl"), None, &Device::flex()).unwrap();
    let base = GenerateRequest { steps: 1, guidance: 0.0, ..request(&run("txt2img_euler")) };
    let plain = sd.generate(&base, true, |_| true).unwrap();
    let sized = GenerateRequest {
        original_size: Some([512, 384]),
        crops_coords_top_left: [16, 32],
        target_size: Some([1024, 768]),
        ..base.clone()
    };
    let out = sd.generate(&sized, true, |_| true).unwrap();
    let ids = &out.dump.iter().find(|(k, _, _)| k == "add_time_ids").unwrap().2;
    assert_eq!(ids[..], [512.0, 384.0, 16.0, 32.0, 1024.0, 768.0]);
    let image = |o: &websd::pipeline::GenerateOutput| o.dump.iter().find(|(k, _, _)| k == "image").unwrap().2.clone();
    assert!(max_abs(&image(&plain), &image(&out)) > 1e-4, "the size conditioning changes the image");
    // The CLI's W,H and X,Y flags mean the same conditioning.
    let dump = std::env::temp_dir().join(format!("websd-sdxl-micro-{}.safetensors", std::process::id()));
    let png = dump.with_extension("png");
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["generate", "--model", fixtures_dir().join("tiny-sdxl").to_str().unwrap(), "--prompt", &base.prompt])
        .args(["--negative", &base.negative_prompt, "--steps", "1", "--guidance", "0", "--seed", "0"])
        .args(["--original-size", "384,512", "--crop", "32,16", "--target-size", "768,1024"])
        .args(["--out", png.to_str().unwrap(), "--dump", dump.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let cli = Run::from_path(&dump);
    assert_eq!(cli.f32("add_time_ids").1[..], ids[..]);
    assert_eq!(cli.f32("image").1, image(&out), "the CLI's image is the library's");
    std::fs::remove_file(&dump).ok();
    std::fs::remove_file(&png).ok();

    let too_large = GenerateRequest { original_size: Some([100_000, 64]), ..base.clone() };
    assert!(matches!(sd.validate(&too_large), Err(PipelineError::Invalid(m)) if m.contains("original_size")));

    let sd15 = StableDiffusion::load_dir(&fixtures_dir().join("tiny-sd"), None, &Device::flex()).unwrap();
    for r in [
        GenerateRequest { prompt_2: Some("x".into()), ..GenerateRequest::default() },
        GenerateRequest { target_size: Some([64, 64]), ..GenerateRequest::default() },
        GenerateRequest { crops_coords_top_left: [0, 8], ..GenerateRequest::default() },
    ] {
        assert!(matches!(sd15.validate(&r), Err(PipelineError::Unsupported(m)) if m.contains("SDXL")));
    }
}
