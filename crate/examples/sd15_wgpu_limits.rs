//! The memory proof on a GPU device: the full-size SD 1.5 U-Net at 64x64 latents (512 px, batch 2) and
//! the VAE decode to 512 px on native wgpu, on a device whose storage-buffer binding limit is 128 MiB
//! (lavapipe's own limit; WebGPU's guaranteed minimum). A buffer past the limit is a validation error,
//! which `websd::gpu` counts: the run must end with none, and agree with the Flex CPU device.
//!
//! `cargo run --release --example sd15_wgpu_limits -- <sd15-random dir>` (see `sd15_check`).

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use websd::config::{AutoencoderKLConfig, UNet2DConditionConfig, parse};
use websd::models::autoencoder_kl::{DEFAULT_BAND_BYTES, VaeDecoder};
use websd::models::unet_2d_condition::UNet2DConditionModel;
use websd::weights::{Variant, component_weights};

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: sd15_wgpu_limits <sd15-random dir>");
    let dir = Path::new(&dir);
    let (gpu, info) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    println!("device: {} ({}), limits {:?}", info.adapter, info.backend, info.limits);
    assert!(info.limits.max_storage_buffer_binding_size <= 128 << 20, "this proof needs a 128 MiB binding limit");
    let cpu = Device::flex();

    let unet_config: UNet2DConditionConfig =
        parse("unet/config.json", &std::fs::read_to_string(dir.join("unet/config.json")).unwrap()).unwrap();
    let unet_file = component_weights(&dir.join("unet"), Some(Variant::Fp16)).unwrap();
    let x: Vec<f32> = to_vec(Tensor::<4>::random([2, 4, 64, 64], Distribution::Normal(0.0, 1.0), &cpu));
    let context: Vec<f32> = to_vec(Tensor::<3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &cpu));
    let run_unet = |device: &Device| {
        let unet = UNet2DConditionModel::load(&unet_config, File::open(&unet_file).unwrap(), device).unwrap();
        let sample = Tensor::<4>::from_data(TensorData::new(x.clone(), [2, 4, 64, 64]), device);
        let ctx = Tensor::<3>::from_data(TensorData::new(context.clone(), [2, 77, 768]), device);
        let t = Instant::now();
        let out = to_vec(unet.forward(sample, 500.0, ctx, None));
        (out, t.elapsed().as_secs_f64())
    };
    let (on_gpu, gpu_s) = run_unet(&gpu);
    println!("unet 2x4x64x64 on wgpu: {gpu_s:.1} s, uncaptured errors {}", websd::gpu::uncaptured_errors());
    let (on_cpu, cpu_s) = run_unet(&cpu);
    let unet_diff = max_diff(&on_gpu, &on_cpu);
    println!("unet 2x4x64x64 on Flex: {cpu_s:.1} s; wgpu vs Flex max abs diff {unet_diff:e}");

    let vae_config: AutoencoderKLConfig =
        parse("vae/config.json", &std::fs::read_to_string(dir.join("vae/config.json")).unwrap()).unwrap();
    let vae_file = component_weights(&dir.join("vae"), Some(Variant::Fp16)).unwrap();
    let z: Vec<f32> = to_vec(Tensor::<4>::random([1, 4, 64, 64], Distribution::Normal(0.0, 1.0), &cpu));
    let decode = |device: &Device| {
        let vae = VaeDecoder::load(&vae_config, File::open(&vae_file).unwrap(), device).unwrap();
        let t = Instant::now();
        let z = Tensor::<4>::from_data(TensorData::new(z.clone(), [1, 4, 64, 64]), device);
        let out = to_vec(vae.decode(z, DEFAULT_BAND_BYTES));
        (out, t.elapsed().as_secs_f64())
    };
    let (img_gpu, gpu_s) = decode(&gpu);
    let (img_cpu, cpu_s) = decode(&cpu);
    let vae_diff = max_diff(&img_gpu, &img_cpu);
    let errors = websd::gpu::uncaptured_errors();
    println!(
        "vae decode 512 px: wgpu {gpu_s:.1} s, Flex {cpu_s:.1} s, max abs diff {vae_diff:e}; uncaptured errors {errors}"
    );
    assert_eq!(errors, 0, "the device rejected something (a buffer past its limits?)");
    assert!(unet_diff <= 1e-3 && vae_diff <= 1e-3, "wgpu and Flex disagree");
    println!("ok: no validation error under a 128 MiB binding limit, results agree");
}
