//! Models as the Hub serves them (issue 18): the real config files of SD 1.5, SD-Turbo, SD 2.1-base and
//! SD 2.1 (768-v), read field by field; and tiny models written in those repos' styles
//! (`tests/fixtures/hub-runs/make_hub_fixtures.py`), each generating diffusers' image from its own
//! configs alone (no scheduler or settings given by the test beyond the run's prompt, steps and
//! guidance).

use crate::common;

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use common::{Run, fixtures_dir, max_diff};
use sha2::{Digest, Sha256};
use websd::config::{AutoencoderKLConfig, UNet2DConditionConfig, parse};
use websd::manifest::Manifest;
use websd::models::clip::ClipTextConfig;
use websd::pipeline::{GenerateRequest, StableDiffusion};
use websd::schedulers::{SchedulerConfig, SchedulerKind};
use websd::tokenizer::{ClipTokenizer, TokenizerFiles};

fn hub_config(model: &str, path: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join("hub-configs").join(model).join(path)).unwrap()
}

fn hub_run(name: &str) -> Run {
    Run::from_path(&fixtures_dir().join("hub-runs").join(name).join("tensors.safetensors"))
}

/// The real model's pieces as the engine reads them.
struct Read {
    unet: UNet2DConditionConfig,
    vae: AutoencoderKLConfig,
    text: ClipTextConfig,
    scheduler: SchedulerKind,
    scheduler_config: SchedulerConfig,
    pad: u32,
}

fn read(model: &str) -> Read {
    let unet = parse("unet/config.json", &hub_config(model, "unet/config.json")).unwrap();
    let vae = parse("vae/config.json", &hub_config(model, "vae/config.json")).unwrap();
    let text = ClipTextConfig::from_json(&hub_config(model, "text_encoder/config.json")).unwrap();
    let scheduler_config = SchedulerConfig::from_json(&hub_config(model, "scheduler/scheduler_config.json")).unwrap();
    let scheduler = SchedulerKind::from_class_name(scheduler_config.class_name().unwrap(), &scheduler_config).unwrap();
    let vocab = std::fs::read(fixtures_dir().join("tokenizer/vocab.json")).unwrap();
    let merges = std::fs::read(fixtures_dir().join("tokenizer/merges.txt")).unwrap();
    let (config, special) =
        (hub_config(model, "tokenizer/tokenizer_config.json"), hub_config(model, "tokenizer/special_tokens_map.json"));
    let tokenizer = ClipTokenizer::from_files(TokenizerFiles {
        vocab_json: Some(&vocab),
        merges_txt: Some(&merges),
        tokenizer_config_json: Some(config.as_bytes()),
        special_tokens_map_json: Some(special.as_bytes()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(tokenizer.max_length, 77, "{model}");
    Read { unet, vae, text, scheduler, scheduler_config, pad: tokenizer.pad }
}

/// The copies in `hub-configs/` are the Hub's bytes: their sha256 is the pinned manifest's.
#[test]
fn hub_config_copies_are_the_pinned_files() {
    let mut checked = 0;
    for model in ["sd15", "sd-turbo", "sd21", "sd21-base", "sdxl-base", "sdxl-turbo"] {
        let manifest = model;
        let text = std::fs::read_to_string(fixtures_dir().join(format!("../../www/hub/{manifest}.json"))).unwrap();
        let manifest = Manifest::from_json(&text).unwrap();
        let dir = fixtures_dir().join("hub-configs").join(model);
        for entry in walk(&dir) {
            let path = entry.strip_prefix(&dir).unwrap().to_str().unwrap().replace('\\', "/");
            let listed = manifest.file(&path).unwrap_or_else(|| panic!("{model}: {path} not in the manifest"));
            let bytes = std::fs::read(&entry).unwrap();
            assert_eq!(bytes.len() as u64, listed.size, "{model}/{path}");
            assert_eq!(hex(&Sha256::digest(&bytes)), listed.sha256, "{model}/{path}");
            checked += 1;
        }
    }
    assert_eq!(checked, 45, "every small file of the six models");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn sd_turbo_real_configs_read_as_diffusers_reads_them() {
    let r = read("sd-turbo");
    // diffusers 0.24 wrote "upcast_attention": null, "num_attention_heads": null: both "not set".
    assert!(!r.unet.upcast_attention);
    assert_eq!(r.unet.num_attention_heads, None);
    assert_eq!((0..4).map(|i| r.unet.attention_head_dim.get(i)).collect::<Vec<_>>(), [5, 10, 20, 20]);
    assert!(r.unet.use_linear_projection);
    assert_eq!((r.unet.sample_size, r.unet.cross_attention_dim, r.unet.in_channels), (64, 1024, 4));
    assert_eq!(r.unet.mid_block_type.as_deref(), Some("UNetMidBlock2DCrossAttn"));
    websd::models::unet_2d_condition::check_supported(&r.unet).unwrap();
    assert_eq!((r.vae.scaling_factor, r.vae.scale_factor()), (0.18215, 8));
    assert_eq!((r.text.num_hidden_layers, r.text.hidden_size, r.text.hidden_act.as_str()), (23, 1024, "gelu"));
    assert_eq!(r.scheduler, SchedulerKind::Euler);
    assert_eq!(r.scheduler_config.str_value("timestep_spacing"), Some("trailing"));
    assert_eq!(r.scheduler_config.str_value("prediction_type"), Some("epsilon"));
    assert_eq!(r.pad, 0, "SD 2.x pads with \"!\" (id 0)");
}

#[test]
fn sd21_768_v_real_configs_read_as_diffusers_reads_them() {
    let r = read("sd21");
    assert!(r.unet.upcast_attention, "SD 2.1's unet config asks for f32 attention scores");
    assert_eq!((r.unet.sample_size * r.vae.scale_factor(), r.unet.cross_attention_dim), (768, 1024));
    assert_eq!((0..4).map(|i| r.unet.attention_head_dim.get(i)).collect::<Vec<_>>(), [5, 10, 20, 20]);
    assert!(r.unet.use_linear_projection);
    websd::models::unet_2d_condition::check_supported(&r.unet).unwrap();
    // No scaling_factor in the 2022 VAE config: diffusers' default.
    assert_eq!(r.vae.scaling_factor, 0.18215);
    assert_eq!((r.text.num_hidden_layers, r.text.hidden_act.as_str()), (23, "gelu"));
    // diffusers 0.8's DDIM: v-prediction, no timestep_spacing (leading), skip_prk_steps and trained_betas: null.
    assert_eq!(r.scheduler, SchedulerKind::Ddim);
    assert_eq!(r.scheduler_config.str_value("prediction_type"), Some("v_prediction"));
    assert_eq!(r.scheduler_config.str_value("timestep_spacing"), None);
    assert_eq!(r.pad, 0);
    let mut scheduler = websd::schedulers::build(r.scheduler, &r.scheduler_config).unwrap();
    scheduler.set_timesteps(20).unwrap();
    assert_eq!(scheduler.timesteps()[..2], [951.0, 901.0], "leading spacing with steps_offset 1");
}

#[test]
fn sd21_base_and_sd15_real_configs_read_as_diffusers_reads_them() {
    let r = read("sd21-base");
    assert!(!r.unet.upcast_attention, "2.1-base's config has no upcast_attention");
    assert_eq!(r.unet.sample_size * r.vae.scale_factor(), 512);
    assert_eq!(r.scheduler, SchedulerKind::Pndm);
    assert_eq!(r.scheduler_config.str_value("prediction_type"), Some("epsilon"));
    assert_eq!(r.pad, 0);
    websd::schedulers::build(r.scheduler, &r.scheduler_config).unwrap().set_timesteps(50).unwrap();

    let r = read("sd15");
    assert_eq!((0..4).map(|i| r.unet.attention_head_dim.get(i)).collect::<Vec<_>>(), [8, 8, 8, 8]);
    assert!(!r.unet.use_linear_projection && !r.unet.upcast_attention);
    assert_eq!((r.unet.sample_size * r.vae.scale_factor(), r.unet.cross_attention_dim), (512, 768));
    assert_eq!((r.text.num_hidden_layers, r.text.hidden_act.as_str()), (12, "quick_gelu"));
    assert_eq!(r.scheduler, SchedulerKind::Pndm);
    assert_eq!(r.pad, 49407, "SD 1.x pads with <|endoftext|>");
    websd::schedulers::build(r.scheduler, &r.scheduler_config).unwrap().set_timesteps(50).unwrap();
}

/// SDXL base 1.0 and SDXL-Turbo as the Hub serves them (their real small files, pinned in
/// `www/hub/sdxl-*.json`; CLIP's vocabulary from `fixtures/tokenizer`), read through the one folder reader
/// both engines use, field by field against what diffusers reads.
#[test]
fn sdxl_base_and_turbo_real_configs_read_as_diffusers_reads_them() {
    use websd::model_folder::{ModelConfigs, Part};
    for (model, sample_size, scheduler, spacing) in [
        ("sdxl-base", 128, SchedulerKind::Euler, "leading"),
        ("sdxl-turbo", 64, SchedulerKind::EulerAncestral, "trailing"),
    ] {
        let dir = fixtures_dir().join("hub-configs").join(model);
        let mut read = |path: &str| {
            let file = dir.join(path);
            let shared = fixtures_dir().join("tokenizer").join(file.file_name().unwrap());
            let name = path.rsplit('/').next().unwrap();
            let bytes = match std::fs::read(&file) {
                Ok(bytes) => Some(bytes),
                Err(_) if matches!(name, "vocab.json" | "merges.txt") => Some(std::fs::read(shared).unwrap()),
                Err(_) => None,
            };
            Ok(bytes)
        };
        let c = ModelConfigs::read(&mut read).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(c.is_sdxl(), "{model}");
        assert_eq!(c.parts(), [Part::TextEncoder, Part::TextEncoder2, Part::Unet, Part::Vae]);
        assert_eq!(c.index.as_ref().and_then(|i| i.force_zeros_for_empty_prompt), Some(true), "{model}");
        let u = &c.unet;
        assert_eq!(u.block_out_channels, [320, 640, 1280]);
        assert_eq!(u.transformer_layers_per_block, websd::config::PerBlock::Each(vec![1, 2, 10]));
        assert_eq!(u.attention_head_dim, websd::config::PerBlock::Each(vec![5, 10, 20]));
        assert_eq!(
            (u.cross_attention_dim, u.addition_time_embed_dim, u.projection_class_embeddings_input_dim),
            (2048, Some(256), Some(2816))
        );
        assert!(u.use_linear_projection && !u.upcast_attention, "{model}: upcast_attention null means false");
        assert_eq!(u.sample_size, sample_size, "{model}");
        assert_eq!((c.vae.scaling_factor, c.vae.force_upcast, c.vae.scale_factor()), (0.13025, true, 8));
        let t = &c.text_encoder;
        assert_eq!(
            (t.hidden_size, t.num_hidden_layers, t.hidden_act.as_str(), t.eos_token_id),
            (768, 12, "quick_gelu", 2)
        );
        let (tokenizer_2, t2) = c.second.as_ref().unwrap();
        assert_eq!(
            (t2.hidden_size, t2.num_hidden_layers, t2.intermediate_size, t2.hidden_act.as_str()),
            (1280, 32, 5120, "gelu")
        );
        assert_eq!((t2.projection_dim, t2.eos_token_id), (1280, 2));
        assert_eq!(
            (c.tokenizer.pad, tokenizer_2.pad),
            (49407, 0),
            "{model}: tokenizer pads with <|endoftext|>, tokenizer_2 with !"
        );
        assert_eq!(SchedulerKind::model_default(&c.scheduler).unwrap(), scheduler, "{model}");
        let raw: serde_json::Value =
            serde_json::from_str(&hub_config(model, "scheduler/scheduler_config.json")).unwrap();
        assert_eq!(raw["timestep_spacing"], spacing, "{model}");
        // On an f16 device the VAE runs in f32 (force_upcast); in a browser without shader-f16 the
        // weights (13.9 GB as f32) are refused before they download.
        assert!(c.vae_upcast(websd::memory::Precision::F16) && !c.vae_upcast(websd::memory::Precision::F32));
        let text = std::fs::read_to_string(fixtures_dir().join(format!("../../www/hub/{model}.json"))).unwrap();
        let manifest = Manifest::from_json(&text).unwrap();
        let weights = manifest.weights_files(None).unwrap();
        assert_eq!(weights.len(), 4, "{model}: both text encoders, the U-Net and the VAE");
        let refused = websd::memory::check_browser_weights(&weights, websd::memory::Precision::F32).unwrap_err();
        assert!(refused.contains("13.9 GB as f32"), "{refused}");
        assert!(websd::memory::check_browser_weights(&weights, websd::memory::Precision::F16).is_ok());
    }
}

/// Generates a hub run from a fixture folder with nothing but the run's prompt, steps, guidance and
/// seed: scheduler, prediction type, spacing and sizes all come from the folder's configs.
fn generate_like(model: &str, run_name: &str) -> Tensor<4> {
    let run = hub_run(run_name);
    let device = Device::flex();
    let model_dir = fixtures_dir().join(model);
    let sd = StableDiffusion::load_dir(&model_dir, None, &device).unwrap();
    let request = GenerateRequest {
        prompt: run.meta("prompt").unwrap(),
        negative_prompt: run.meta("negative_prompt").unwrap(),
        steps: run.meta("steps").unwrap().parse().unwrap(),
        guidance: run.meta("guidance_scale").unwrap().parse().unwrap(),
        seed: 0,
        ..Default::default()
    };
    let out = sd.generate(&request, true, |_| true).unwrap();
    let get = |n: &str| {
        let (_, shape, values) = out.dump.iter().find(|(k, _, _)| k == n).unwrap_or_else(|| panic!("no dump {n}"));
        Tensor::<4>::from_data(TensorData::new(values.clone(), shape.clone()), &device)
    };
    let calls = out.dump.iter().filter(|(k, _, _)| k.starts_with("unet_out_")).count();
    assert_eq!(calls, run.names_with_prefix("unet_out_").len(), "{model}: U-Net calls");
    let initial = max_diff(get("initial_latents"), &run.f32("initial_latents").1);
    let fin = max_diff(get("final_latents"), &run.f32("final_latents").1);
    let img = max_diff(out.images.clone(), &run.f32("image").1);
    eprintln!("{model} {run_name} vs diffusers: initial latents {initial:e}, final latents {fin:e}, image {img:e}");
    assert!(initial <= 1e-6, "{model}: initial latents differ by {initial}");
    assert!(fin <= 2e-3 && img <= 2e-3, "{model} {run_name}: final latents {fin}, image {img}");
    out.images
}

/// SD 2.1 as its repo was written in Dec 2022 (null fields, diffusers 0.8 scheduler, legacy key names, no
/// tokenizer.json, no model_index.json), and its modern twin: the same image, diffusers' image.
#[test]
fn sd2_hub_2022_folder_and_its_modern_twin_give_diffusers_image() {
    let old = generate_like("tiny-sd2-hub2022", "txt2img_sd2_vpred_ddim");
    let new = generate_like("tiny-sd2", "txt2img_sd2_vpred_ddim");
    let twins = max_diff(old, &new.into_data().try_to_vec::<f32>().unwrap());
    eprintln!("tiny-sd2-hub2022 vs tiny-sd2: image max abs diff {twins:e}");
    assert_eq!(twins, 0.0, "the same weights and meaning must give the same image");
}

/// SD-Turbo as its authors intend: Euler with trailing spacing from its own config, no classifier-free
/// guidance (one U-Net call per step, no negative pass), 1 and 4 steps.
#[test]
fn sd_turbo_folder_one_and_four_steps_without_guidance() {
    generate_like("tiny-sd-turbo", "txt2img_turbo_1step");
    generate_like("tiny-sd-turbo", "txt2img_turbo_4step");
}

/// The CLI on the 2022-style folder: `sd generate` with only the model and the run's settings.
#[test]
fn cli_generates_from_the_2022_style_folder() {
    let run = hub_run("txt2img_sd2_vpred_ddim");
    let dir = std::env::temp_dir().join(format!("websd-hub-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, dump) = (dir.join("sd2.png"), dir.join("sd2.safetensors"));
    let model = fixtures_dir().join("tiny-sd2-hub2022");
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", &run.meta("prompt").unwrap()])
        .args(["--negative", &run.meta("negative_prompt").unwrap(), "--steps", "8", "--seed", "0"])
        .args(["--out", out.to_str().unwrap(), "--dump", dump.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let image = Run::from_path(&dump).f32("image").1;
    let d = image.iter().zip(&run.f32("image").1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("sd generate on tiny-sd2-hub2022: image max abs diff {d:e} vs diffusers");
    assert!(d <= 2e-3, "{d}");
}

/// SD-Turbo's 1 step without guidance lives in its manifest (`www/hub/sd-turbo.json`); the CLI finds it
/// for a local copy by the copy's `unet/config.json`, the page through the engine's `ModelInfo`.
#[test]
fn recommended_settings_come_from_the_builtin_manifest() {
    let sha = |model: &str| hex(&Sha256::digest(hub_config(model, "unet/config.json").as_bytes()));
    let (name, turbo) = websd::manifest::builtin_by_unet_config(&sha("sd-turbo")).expect("SD-Turbo's unet config");
    assert_eq!((name, turbo.steps_and_guidance()), ("sd-turbo", (1, 0.0)));
    for model in ["sd15", "sd21", "sd21-base"] {
        let (name, manifest) = websd::manifest::builtin_by_unet_config(&sha(model)).unwrap();
        assert_eq!((name, manifest.steps_and_guidance()), (model, (50, 7.5)));
    }
    assert!(websd::manifest::builtin_by_unet_config(&sha("sd15").replace('a', "b")).is_none());
}
