//! The `sd` binary: its subcommands and the exit-code contract (0 on success, 2 and one line on bad input).

use std::process::Command;

fn sd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sd")).args(args).output().expect("sd runs")
}

#[test]
fn unknown_subcommand_is_exit_code_2() {
    let out = sd(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn self_test_compares_wgpu_with_the_cpu() {
    let out = sd(&["self-test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["passed"], true, "{report}");
    assert!(report["maxAbsDiff"].as_f64().unwrap() <= 1e-4);
}

#[test]
fn gpu_info_reports_adapter_and_limits() {
    let out = sd(&["gpu-info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert!(!info["adapter"].as_str().unwrap().is_empty());
    assert!(info["limits"]["maxStorageBufferBindingSize"].as_u64().unwrap() >= 128 << 20);
}

use crate::common;

use common::{Run, fixtures_dir};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("websd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs `sd generate` with a run's settings and `--seed` and compares the dump with diffusers'.
fn generate_like(run_name: &str, model: &str, extra: &[&str]) {
    let run = Run::load(run_name);
    let (out, dump) = (tmp(&format!("{run_name}.png")), tmp(&format!("{run_name}.safetensors")));
    let model = fixtures_dir().join(model);
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a photo of an astronaut riding a horse",
        "--negative",
        "blurry",
        "--steps",
        "8",
        "--seed",
        "0",
        "--variant",
        "fp32",
        "--out",
        out.to_str().unwrap(),
        "--dump",
        dump.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let result = sd(&args);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let ours = Run::from_path(&dump);
    for (name, tolerance) in [("initial_latents", 1e-6), ("final_latents", 2e-3), ("image", 2e-3)] {
        let d = diff(&ours.f32(name).1, &run.f32(name).1);
        eprintln!("{run_name} via the CLI: {name} max abs diff {d:e}");
        assert!(d <= tolerance, "{run_name}: {name} differs by {d}");
    }
    // The PNG carries the settings in A1111's `parameters` chunk.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!((info.width, info.height), (64, 64));
    let text = info.utf8_text.iter().find(|t| t.keyword == "parameters").expect("parameters chunk");
    let text = text.get_text().unwrap();
    assert!(text.starts_with("a photo of an astronaut riding a horse\nNegative prompt: blurry\nSteps: 8, Sampler: DDIM, CFG scale: 7.5, Seed: 0, Size: 64x64, Model hash: "), "{text}");
}

#[test]
fn generate_txt2img_equals_diffusers() {
    generate_like("txt2img_ddim", "tiny-sd", &[]);
}

#[test]
fn generate_img2img_equals_diffusers() {
    let init = fixtures_dir().join("runs/img2img_ddim/init_image.png");
    generate_like("img2img_ddim", "tiny-sd", &["--init-image", init.to_str().unwrap(), "--strength", "0.75"]);
}

#[test]
fn generate_inpainting_equals_diffusers() {
    let dir = fixtures_dir().join("runs/inpaint_ddim");
    let (init, mask) = (dir.join("init_image.png"), dir.join("mask.png"));
    generate_like(
        "inpaint_ddim",
        "tiny-sd-inpaint",
        &["--init-image", init.to_str().unwrap(), "--mask", mask.to_str().unwrap()],
    );
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let model = fixtures_dir().join("tiny-sd");
    let model = model.to_str().unwrap();
    let out = tmp("bad.png");
    let out = out.to_str().unwrap();
    let not_png = fixtures_dir().join("tiny-sd/model_index.json");
    let init = fixtures_dir().join("runs/img2img_ddim/init_image.png");
    let small = tmp("small.png");
    {
        let mut e = png::Encoder::new(std::fs::File::create(&small).unwrap(), 8, 8);
        e.set_color(png::ColorType::Grayscale);
        e.write_header().unwrap().write_image_data(&[255; 64]).unwrap();
    }
    let incomplete = tmp("incomplete-model");
    std::fs::create_dir_all(&incomplete).unwrap();
    std::fs::copy(fixtures_dir().join("tiny-sd/model_index.json"), incomplete.join("model_index.json")).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--width", "60"], "multiples of 8"),
        (vec!["--steps", "0"], "steps"),
        (vec!["--steps", "10000"], "steps"),
        (vec!["--guidance", "NaN"], "guidance"),
        (vec!["--guidance", "-1"], "guidance"),
        (vec!["--init-image", init.to_str().unwrap(), "--strength", "1.5"], "strength"),
        (vec!["--strength", "0.5"], "--init-image"),
        (vec!["--mask", init.to_str().unwrap()], "--init-image"),
        (vec!["--init-image", not_png.to_str().unwrap()], "PNG"),
        (vec!["--init-image", init.to_str().unwrap(), "--mask", small.to_str().unwrap()], "mask"),
        (vec!["--scheduler", "heun"], "unknown scheduler"),
        (vec!["--seed", "18446744073709551616"], "seed"),
        (vec!["--prompt-2", "x"], "SDXL"),
        (vec!["--target-size", "64,64"], "SDXL"),
        (vec!["--original-size", "1024"], "1024,1024 (W,H)"),
        (vec!["--crop", "a,b"], "whole number"),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["generate", "--model", model, "--prompt", "x", "--out", out, "--steps", "2"];
        args.extend(extra.iter());
        let result = sd(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{extra:?}: one line, got {stderr}");
        assert!(stderr.contains(expect), "{extra:?}: expected {expect:?} in {stderr}");
    }
    // A1111 prompt weighting by default: a weight that is not a number is bad input, before any work;
    // with --no-prompt-weighting the same prompt is plain text.
    let weighted =
        ["generate", "--model", model, "--prompt", "(a:1.2.3)", "--out", out, "--steps", "1", "--width", "16"];
    let result = sd(&[&weighted[..], &["--height", "16"]].concat());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"1.2.3\" in \"(text:1.2.3)\" is not a number"), "{stderr}");
    let result = sd(&[&weighted[..], &["--height", "16", "--no-prompt-weighting"]].concat());
    assert_eq!(result.status.code(), Some(0), "{}", String::from_utf8_lossy(&result.stderr));
    let result = sd(&["generate", "--model", incomplete.to_str().unwrap(), "--prompt", "x", "--out", out]);
    assert_eq!(result.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("tokenizer"),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn manifest_lists_every_file_with_its_hash() {
    let dir = fixtures_dir().join("tiny-sd");
    let result = sd(&["manifest", dir.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    let files = manifest["files"].as_array().unwrap();
    let index = files.iter().find(|f| f["path"] == "model_index.json").expect("model_index.json listed");
    let bytes = std::fs::read(dir.join("model_index.json")).unwrap();
    assert_eq!(index["size"], bytes.len() as u64);
    assert_eq!(index["sha256"].as_str().unwrap().len(), 64);
    assert!(files.iter().any(|f| f["path"] == "unet/diffusion_pytorch_model.fp16.safetensors"));
    assert_eq!(sd(&["manifest", "/nonexistent"]).status.code(), Some(2));
}
