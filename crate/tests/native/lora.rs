//! LoRA against diffusers (`tests/fixtures/lora/`): a PEFT-made LoRA on tiny-sd's U-Net (attention,
//! feed-forward, 1x1 and 3x3 convolutions) and text encoder, in PEFT and in kohya naming, loaded with
//! `load_lora_weights` and fused at a weight; our image within 2e-3 of diffusers' for each, and the
//! model without it gives back the plain image. Plus the CLI's `--lora` and LoRAs that do not fit.

use crate::common;

use burn::tensor::Device;
use common::{Run, fixtures_dir, max_diff};
use websd::lora::{Component, Lora, LoraError};
use websd::pipeline::{GenerateRequest, PipelineError, StableDiffusion};
use websd::schedulers::SchedulerKind;
use websd::weights::Variant;

fn lora(file: &str) -> Lora {
    let path = fixtures_dir().join("lora").join(file);
    Lora::from_source(file, std::fs::File::open(path).unwrap()).unwrap()
}

fn request(run: &Run) -> GenerateRequest {
    let meta = |k: &str| run.meta(k).unwrap();
    GenerateRequest {
        prompt: meta("prompt"),
        negative_prompt: meta("negative_prompt"),
        steps: meta("num_inference_steps").parse().unwrap(),
        guidance: meta("guidance_scale").parse().unwrap(),
        seed: meta("seed").parse().unwrap(),
        width: Some(meta("width").parse().unwrap()),
        height: Some(meta("height").parse().unwrap()),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    }
}

fn generate(loras: &[(Lora, f32)], run: &Run, key: &str) -> f32 {
    let model = StableDiffusion::load_dir_with_loras(
        &fixtures_dir().join("tiny-sd"),
        Some(Variant::Fp32),
        loras,
        &Device::flex(),
    )
    .unwrap();
    let out = model.generate(&request(run), false, |_| true).unwrap();
    let diff = max_diff(out.images, &run.f32(key).1);
    eprintln!("{key}: max abs diff {diff:e} vs diffusers");
    diff
}

#[test]
fn peft_and_kohya_loras_match_diffusers_fused() {
    let run = Run::from_path(&fixtures_dir().join("lora/runs.safetensors"));
    let (peft, kohya) = (lora("lora_peft.safetensors"), lora("lora_kohya.safetensors"));
    assert_eq!((peft.layer_count(Component::Unet), peft.layer_count(Component::TextEncoder)), (84, 25));
    assert_eq!((kohya.layer_count(Component::Unet), kohya.layer_count(Component::TextEncoder)), (84, 25));
    for (loras, key) in [
        (vec![(peft.clone(), 1.0)], "peft_1.0"),
        (vec![(peft.clone(), 0.5)], "peft_0.5"),
        (vec![(kohya.clone(), 1.0)], "kohya_1.0"),
        (vec![], "no_lora"),
    ] {
        assert!(generate(&loras, &run, key) <= 2e-3, "{key}");
    }
    // The LoRA does change the image (by ~0.1 at weight 1).
    let (with, without) = (run.f32("peft_1.0").1, run.f32("no_lora").1);
    let moved = with.iter().zip(&without).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 0.05, "{moved}");
}

/// The browser's way: the model loaded once, LoRAs merged into it, re-weighted and removed
/// (`lora::Merged`). Each image is the one a load with that LoRA merged gives, bit for bit, and the
/// removal gives back the plain model's image exactly.
#[test]
fn loras_merge_into_a_loaded_model_reweight_and_come_off_exactly() {
    let run = Run::from_path(&fixtures_dir().join("lora/runs.safetensors"));
    let (peft, kohya) = (lora("lora_peft.safetensors"), lora("lora_kohya.safetensors"));
    let dir = fixtures_dir().join("tiny-sd");
    let device = Device::flex();
    let images = |model: &StableDiffusion| {
        let out = model.generate(&request(&run), false, |_| true).unwrap().images;
        out.into_data().try_to_vec::<f32>().unwrap()
    };
    let loaded = |loras: &[(Lora, f32)]| {
        images(&StableDiffusion::load_dir_with_loras(&dir, Some(Variant::Fp32), loras, &device).unwrap())
    };
    let (mut model, mut merged) = StableDiffusion::load_dir_adaptable(&dir, Some(Variant::Fp32), &device).unwrap();
    let plain = images(&model);
    assert_eq!(plain, loaded(&[]));
    let mut apply = |model: &mut StableDiffusion, loras: &[(&Lora, f32)]| {
        let list: Vec<_> = loras.iter().map(|(l, w)| (*l, format!("sha-of-{}", l.name), *w)).collect();
        let (te, unet) = merged.apply(&list, model.text_encoder.clone(), model.unet.clone(), &device)?;
        (model.text_encoder, model.unet) = (te, unet);
        Ok::<_, LoraError>((merged.adapted_weights(), merged.kept_bytes()))
    };
    for (loras, key) in [
        (vec![(&peft, 1.0)], Some("peft_1.0")),
        (vec![(&peft, 0.5)], Some("peft_0.5")),
        (vec![(&kohya, 1.0)], Some("kohya_1.0")),
        (vec![(&peft, 0.5), (&kohya, 0.5)], None),
        (vec![], Some("no_lora")),
    ] {
        let (weights, kept) = apply(&mut model, &loras).unwrap();
        eprintln!("{key:?}: {weights} weights adapted, {kept} bytes kept");
        let got = images(&model);
        let owned: Vec<(Lora, f32)> = loras.iter().map(|(l, w)| ((*l).clone(), *w)).collect();
        assert_eq!(got, loaded(&owned), "{key:?}: merged into the loaded model = merged while loading");
        if let Some(key) = key {
            let diff = got.iter().zip(&run.f32(key).1).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff <= 2e-3, "{key}: {diff}");
        }
        assert_eq!(weights, if loras.is_empty() { 0 } else { 84 + 25 });
    }
    assert_eq!(images(&model), plain, "every LoRA off: the loaded weights exactly");
    // A LoRA that fits no weight changes nothing.
    let other = StableDiffusion::load_dir_adaptable(&fixtures_dir().join("tiny-sd2"), None, &device);
    let (sd2, mut sd2_merged) = other.unwrap();
    let err = sd2_merged.apply(&[(&peft, String::new(), 1.0)], sd2.text_encoder.clone(), sd2.unet.clone(), &device);
    assert!(matches!(err, Err(LoraError::Unmatched { .. })));
    assert_eq!(sd2_merged.adapted_weights(), 0);
    drop(sd2);
}

#[test]
fn a_lora_that_does_not_fit_is_refused_before_loading() {
    // tiny-sd2's U-Net and text encoder have other widths: no layer of tiny-sd's LoRA fits.
    let loras = [(lora("lora_peft.safetensors"), 1.0)];
    let err = StableDiffusion::load_dir_with_loras(&fixtures_dir().join("tiny-sd2"), None, &loras, &Device::flex())
        .err()
        .unwrap();
    assert!(matches!(&err, PipelineError::Invalid(m) if m.contains("match no weight of this model's")), "{err:?}");
    // Not a LoRA at all: a model's weights.
    let unet = std::fs::File::open(fixtures_dir().join("tiny-sd/unet/diffusion_pytorch_model.safetensors")).unwrap();
    let err = Lora::from_source("unet", unet).err().unwrap();
    assert!(matches!(&err, LoraError::Invalid { message, .. } if message.contains("is not a LoRA tensor")), "{err}");
    let garbage = std::io::Cursor::new(b"not a safetensors file at all".to_vec());
    assert!(matches!(Lora::from_source("x", garbage), Err(LoraError::File { .. })));
}

fn png_parameters(path: &std::path::Path) -> String {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let text = reader.info().utf8_text.iter().find(|t| t.keyword == "parameters").expect("parameters").clone();
    text.get_text().unwrap()
}

#[test]
fn the_cli_takes_loras_with_weights_and_prompt_tags() {
    let out = std::env::temp_dir().join("websd-cli-lora.png");
    let model = fixtures_dir().join("tiny-sd");
    let file = fixtures_dir().join("lora/lora_peft.safetensors");
    let sd = |prompt: &str, lora: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sd"))
            .args(["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--out"])
            .arg(&out)
            .args(["--steps", "1", "--width", "16", "--height", "16", "--lora", lora])
            .output()
            .unwrap()
    };
    let ok = sd("a cat", &format!("{}:0.5", file.display()));
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let plain = png_parameters(&out);
    // A1111's way: the tag in the prompt, the file's addnet hash (sha256 after the header).
    let bytes = std::fs::read(&file).unwrap();
    let hash = websd::lora::short_hash(&bytes).unwrap();
    assert!(plain.starts_with("a cat <lora:lora_peft:0.5>\n"), "{plain}");
    assert!(plain.ends_with(&format!(", Lora hashes: \"lora_peft: {hash}\"")), "{plain}");
    let image = std::fs::read(&out).unwrap();
    // A tag sets the weight (0.5 as above: the same image), and stays in the PNG as typed.
    let tagged = sd("a cat <lora:lora_peft:0.5>", &file.display().to_string());
    assert_eq!(tagged.status.code(), Some(0), "{}", String::from_utf8_lossy(&tagged.stderr));
    assert!(png_parameters(&out).starts_with("a cat <lora:lora_peft:0.5>\n"));
    let pixels = |png: &[u8]| {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        buf
    };
    assert_eq!(pixels(&image), pixels(&std::fs::read(&out).unwrap()));
    let unknown = sd("a cat <lora:other:1>", &file.display().to_string());
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("<lora:other>"));
    let missing = sd("a cat", "/nonexistent/lora.safetensors:0.5");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/lora.safetensors"));
}
