//! The full-size SDXL check: SDXL base 1.0's real U-Net architecture (2.6B parameters, transformer depths
//! 1, 2, 10, text-time conditioning) with random weights, one call against diffusers' on the Flex CPU
//! device in f32.
//!
//! `tests/fixtures/sdxl-runs/make_sdxl_fullsize.py DIR` writes the model and diffusers' inputs and output
//! (5 GB); then `cargo run --release --example sdxl_unet_check -- DIR` prints the max abs diff (the
//! issue's bound is 1e-4), the load's peak memory and the call's time.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use websd::config::{UNet2DConditionConfig, parse};
use websd::models::unet_2d_condition::{TextTimeConditioning, UNet2DConditionModel};
use websd::weights::SafetensorsReader;

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: sdxl_unet_check DIR");
    let dir = Path::new(&dir);
    let device = Device::flex();
    let mut io = SafetensorsReader::new(File::open(dir.join("io.safetensors")).unwrap()).unwrap();
    let mut read = |name: &str| io.read_f32(name).unwrap_or_else(|e| panic!("{name}: {e}"));

    let config: UNet2DConditionConfig =
        parse("unet/config.json", &std::fs::read_to_string(dir.join("unet/config.json")).unwrap()).unwrap();
    let file = dir.join("unet/diffusion_pytorch_model.fp16.safetensors");
    let file_mib = std::fs::metadata(&file).unwrap().len() as f64 / (1 << 20) as f64;
    let before = rss_mib("VmRSS:");
    let t = Instant::now();
    let unet = UNet2DConditionModel::load(&config, File::open(&file).unwrap(), &device).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let peak = rss_mib("VmHWM:");
    println!(
        "unet load: {load_s:.1} s; fp16 file {file_mib:.0} MiB = {:.0} MiB as f32; peak RSS - before = {:.0} MiB",
        2.0 * file_mib,
        peak - before
    );

    let (shape, values) = read("sample");
    let sample = Tensor::<4>::from_data(TensorData::new(values, shape), &device);
    let (shape, values) = read("encoder_hidden_states");
    let context = Tensor::<3>::from_data(TensorData::new(values, shape), &device);
    let (shape, values) = read("text_embeds");
    let text_embeds = Tensor::<2>::from_data(TensorData::new(values, shape), &device);
    let time_ids = read("time_ids").1.chunks(6).map(|c| <[f32; 6]>::try_from(c).unwrap()).collect();
    let timestep = read("timestep").1[0];
    let (shape, expected) = read("out");
    let added = TextTimeConditioning { text_embeds, time_ids };

    let t = Instant::now();
    let out = unet.forward(sample, timestep, context, Some(&added));
    let out: Vec<f32> = out.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let diff = out.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!(
        "unet {shape:?} t={timestep}: {secs:.1} s on Flex; max abs diff {diff:e} (outputs up to {scale:.3}): {}",
        if diff <= 1e-4 { "within 1e-4" } else { "OVER 1e-4" }
    );
    if !(diff <= 1e-4) {
        std::process::exit(1);
    }
}
