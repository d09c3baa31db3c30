//! One U-Net call on given inputs against torch's output for them (the benchmark's models):
//! `cargo run --release --example unet_io_check -- <model dir> <io dir with io_sample.npy,
//! io_timestep.npy, io_encoder_hidden_states.npy> <torch output .npy> [cpu|wgpu|wgpu-f16]`
//!
//! `unet_io_check <model dir> --serve [cpu|wgpu|wgpu-f16]` loads the U-Net once (on Flex, or on wgpu
//! computing in f32 or in f16), then answers each stdin line `<io dir> <torch output .npy>` with one timed
//! U-Net call, `ms <time> diff <max abs diff>`: the benchmark's native section (web/bench/native.py)
//! alternates it with diffusers' torch U-Net. Where the device measures its kernels
//! (`websd::kernels::tune`), it does so after the first call, as the pipeline after its first step.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use websd::config::UNet2DConditionConfig;
use websd::models::unet_2d_condition::UNet2DConditionModel;
use websd::pipeline::StableDiffusion;
use websd::weights::{Variant, component_weights};

mod common;

/// A little-endian f4 or i8 .npy file as f32 values and its shape.
fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let buf = std::fs::read(path).unwrap();
    let n = u16::from_le_bytes([buf[8], buf[9]]) as usize;
    let header = std::str::from_utf8(&buf[10..10 + n]).unwrap();
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    let body = &buf[10 + n..];
    let values = if header.contains("'<f4'") {
        body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else {
        body.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect()
    };
    (shape, values)
}

/// One U-Net call on the inputs in `io`: milliseconds and the max abs difference from `out`.
fn call(unet: &UNet2DConditionModel, device: &Device, io: &Path, out: &Path) -> (f64, f32, usize) {
    let (ss, s) = npy(&io.join("io_sample.npy"));
    let (_, t) = npy(&io.join("io_timestep.npy"));
    let (es, e) = npy(&io.join("io_encoder_hidden_states.npy"));
    let (_, reference) = npy(out);
    let sample = Tensor::<4>::from_data(TensorData::new(s, [ss[0], ss[1], ss[2], ss[3]]), device);
    let ehs = Tensor::<3>::from_data(TensorData::new(e, [es[0], es[1], es[2]]), device);
    let t0 = std::time::Instant::now();
    let y = unet.forward(sample, t[0], ehs, None);
    let values = y.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let diff = values.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    (ms, diff, values.len())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(2).map(String::as_str) == Some("--serve") {
        let device = common::device(args.get(3).map_or("cpu", String::as_str));
        let dir = Path::new(&args[1]);
        let config = std::fs::read_to_string(dir.join("unet/config.json")).unwrap();
        let config: UNet2DConditionConfig = websd::config::parse("unet/config.json", &config).unwrap();
        let weights = component_weights(&dir.join("unet"), None).unwrap();
        let unet = UNet2DConditionModel::load(&config, std::fs::File::open(weights).unwrap(), &device).unwrap();
        println!("ready");
        for line in std::io::stdin().lines() {
            let line = line.unwrap();
            let (io, out) = line.split_once(' ').expect("<io dir> <torch output .npy>");
            let (ms, diff, _) = call(&unet, &device, Path::new(io), Path::new(out));
            println!("ms {ms} diff {diff:e}");
            // Where the device measures its kernels (an adapter not measured here, or
            // `WEBSD_KERNELS=tune`), as the pipeline does after its first step: the next calls run
            // the picks. What was measured goes to stderr (native.py reads stdout).
            let t = std::time::Instant::now();
            let found = pollster::block_on(websd::models::tuning::tune_pending(&device, websd::gpu::uncaptured_errors));
            if !found.is_empty() {
                eprintln!("{} shapes measured in {:.1} s", found.len(), t.elapsed().as_secs_f64());
                for f in &found {
                    eprintln!("  {}", f.summary());
                }
            }
        }
        return;
    }
    let (dir, io, out) = (Path::new(&args[1]), Path::new(&args[2]), Path::new(&args[3]));
    let device = common::device(args.get(4).map_or("cpu", String::as_str));
    let sd = StableDiffusion::load_dir(dir, Some(Variant::Fp32), &device).unwrap();
    let (ms, diff, n) = call(&sd.unet, &device, io, out);
    println!("max abs diff vs torch {diff:e} ({n} values, {ms:.0} ms)");
}
