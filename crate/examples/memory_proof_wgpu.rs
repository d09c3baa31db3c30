//! The memory plan ([`websd::memory`]) proved on a device whose storage bindings stop at 128 MiB
//! (lavapipe): for each size, the U-Net call the plan makes for a batch (default 4) with guidance (its
//! samples per call) runs the full-size SD 1.5 U-Net's layers with the largest buffers, at level 0:
//! - the feed-forward of `down_blocks.0.attentions.0` (the GEGLU projection `[s, tokens, 2560]`, split
//!   in token pieces);
//! - `up_blocks.3.resnets.0` on the skip concatenation `[s, 960, h, w]` (the widest tensor of a call).
//! Self-attention is left out: its scores run in blocks of at most 32 MiB whatever the size, and its
//! cost grows with the square of the positions (hours at 1024 px on lavapipe's 2 cores).
//!
//! Passes when the device reports no error and every output is finite. `--f16` computes in f16.
//!
//! `cargo run --release --example memory_proof_wgpu -- <sd15-random dir> [--f16] [--batch N] [SIZE...]`
//!
//! `--table <model dir>...` prints the plan instead (configs only, no device): size x batch x precision
//! -> U-Net samples per call, largest buffer, estimated peak activations, or the refusal.

use std::fs::File;
use std::time::Instant;

use burn::tensor::{Distribution, FloatDType, Tensor};
use websd::config::{AutoencoderKLConfig, UNet2DConditionConfig, parse};
use websd::memory::{Precision, Workload, plan};
use websd::models::attention::FeedForward;
use websd::models::resnet::ResnetBlock2D;
use websd::weights::{TensorLoader, Variant, component_weights};

fn keep(name: &str) -> Option<String> {
    (name.starts_with("down_blocks.0.attentions.0.transformer_blocks.0.ff.")
        || name.starts_with("up_blocks.3.resnets.0."))
    .then(|| name.to_string())
}

fn table(dirs: &[String]) {
    println!(
        "| model | size | batch | precision | U-Net samples per call | largest buffer | estimated peak activations |"
    );
    println!("|---|---|---|---|---|---|---|");
    for dir in dirs {
        let dir = std::path::Path::new(dir);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let unet: UNet2DConditionConfig = parse("unet", &read("unet/config.json")).unwrap();
        let vae: AutoencoderKLConfig = parse("vae", &read("vae/config.json")).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy();
        for side in [512, 768, 1024, 1536, 2048] {
            for batch in [1, 2, 4, 8] {
                for precision in [Precision::F32, Precision::F16] {
                    let work = Workload { width: side, height: side, batch, guidance: true, encode: false, precision };
                    let row = match plan(&unet, &vae, &work) {
                        Ok(p) => format!(
                            "{} | {:.1} MiB ({}) | {:.0} MiB",
                            p.unet_samples_per_call,
                            p.largest.bytes as f64 / 1048576.0,
                            p.largest.what,
                            p.peak_activation_bytes as f64 / 1048576.0
                        ),
                        Err(e) => format!("refused | `too-large`: {e} | -"),
                    };
                    println!("| {name} | {side} px | {batch} | {precision:?} | {row} |");
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--table") {
        return table(&args[1..]);
    }
    let usage = "usage: memory_proof_wgpu <sd15-random dir> [--f16] [--batch N] [SIZE...]";
    let dir = std::path::PathBuf::from(args.first().expect(usage));
    let f16 = args.iter().any(|a| a == "--f16");
    let batch: usize = match args.iter().position(|a| a == "--batch") {
        Some(i) => args.get(i + 1).and_then(|b| b.parse().ok()).expect(usage),
        None => 4,
    };
    let batch_at = args.iter().position(|a| a == "--batch").map(|i| i + 1);
    let sizes: Vec<usize> =
        (1..args.len()).filter(|&i| Some(i) != batch_at).filter_map(|i| args[i].parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![512, 768, 1024] } else { sizes };
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let unet_config: UNet2DConditionConfig = parse("unet", &read("unet/config.json")).unwrap();
    let vae_config: AutoencoderKLConfig = parse("vae", &read("vae/config.json")).unwrap();

    let (mut gpu, info) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    if f16 {
        assert!(info.shader_f16, "--f16 needs shader-f16");
        gpu.configure(FloatDType::F16).unwrap();
    }
    let binding = info.limits.max_storage_buffer_binding_size;
    println!("device: {}, max storage binding {} MiB", info.adapter, binding >> 20);
    assert!(binding <= websd::memory::MAX_BUFFER_BYTES, "the proof needs a device capped at 128 MiB");
    let precision = if f16 { Precision::F16 } else { Precision::F32 };

    let file = component_weights(&dir.join("unet"), Some(Variant::Fp16)).unwrap();
    let mut w = TensorLoader::new(File::open(&file).unwrap(), keep, &gpu).unwrap();
    let ff = FeedForward::load(&mut w, "down_blocks.0.attentions.0.transformer_blocks.0.ff", 320).unwrap();
    let resnet = ResnetBlock2D::load(&mut w, "up_blocks.3.resnets.0", 960, 320, Some(1280), 32, 1e-5).unwrap();
    w.finish().unwrap();

    println!(
        "| size | precision | batch {batch} with guidance: U-Net samples per call | plan's largest buffer | feed-forward (GEGLU) | resnet on the widest tensor |"
    );
    println!("|---|---|---|---|---|---|");
    for side in sizes {
        let work = Workload { width: side, height: side, batch, guidance: true, encode: false, precision };
        let p = plan(&unet_config, &vae_config, &work).expect("the plan fits");
        let (s, l) = (p.unet_samples_per_call, side / 8);
        let normal = Distribution::Normal(0.0, 1.0);
        let finite = |v: Vec<f32>| v.iter().all(|x| x.is_finite());
        let t = Instant::now();
        let x = Tensor::<3>::random([s, l * l, 320], normal, &gpu);
        let ok_a = finite(ff.forward(x, None).cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap());
        let t_a = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let skip = Tensor::<4>::random([s, 960, l, l], normal, &gpu);
        let temb = Tensor::<2>::random([s, 1280], normal, &gpu);
        let ok_b =
            finite(resnet.forward(skip, Some(&temb)).cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap());
        let t_b = t.elapsed().as_secs_f64();
        let errors = websd::gpu::uncaptured_errors();
        println!(
            "| {side} px | {precision:?} | {s} | {:.1} MiB ({}) | [{s}, {}, 320]: {t_a:.1} s, finite {ok_a} | [{s}, 960, {l}, {l}]: {t_b:.1} s, finite {ok_b} |",
            p.largest.bytes as f64 / 1048576.0,
            p.largest.what,
            l * l
        );
        assert_eq!(errors, 0, "the device rejected a buffer or kernel at {side} px");
        assert!(ok_a && ok_b, "non-finite output at {side} px");
    }
    println!("ok: no device errors");
}
