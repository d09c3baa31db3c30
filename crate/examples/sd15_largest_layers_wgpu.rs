//! A cheaper memory proof than `sd15_wgpu_limits` (whose full 512 px U-Net takes lavapipe far too long):
//! the full-size U-Net's *largest* layers at their 512 px shapes (batch 2 for guidance), on native wgpu
//! under a 128 MiB storage-binding limit, against Flex:
//! - the first down block's spatial transformer on `[2, 320, 64, 64]`: self-attention over 4096 tokens
//!   (a materialised score matrix would be `[2, 8, 4096, 4096]` = 1 GiB) and the GEGLU projection
//!   `[2, 4096, 2560]` (80 MiB), with cross-attention on `[2, 77, 768]`;
//! - the last up block's first ResNet on the skip concatenation `[2, 960, 64, 64]` (3x3 convs whose im2col
//!   would be 270 MiB).
//!
//! `cargo run --release --example sd15_largest_layers_wgpu -- <sd15-random dir>`

use std::fs::File;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use websd::models::resnet::ResnetBlock2D;
use websd::models::transformer_2d::{Transformer2DModel, Transformer2DShape};
use websd::weights::{TensorLoader, Variant, component_weights};

fn keep(name: &str) -> Option<String> {
    (name.starts_with("down_blocks.0.attentions.0.") || name.starts_with("up_blocks.3.resnets.0."))
        .then(|| name.to_string())
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn main() {
    let dir =
        std::path::PathBuf::from(std::env::args().nth(1).expect("usage: sd15_largest_layers_wgpu <sd15-random dir>"));
    let (gpu, info) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    println!("device: {}, max storage binding {} MiB", info.adapter, info.limits.max_storage_buffer_binding_size >> 20);
    assert!(info.limits.max_storage_buffer_binding_size <= 128 << 20);
    let cpu = Device::flex();
    let file = component_weights(&dir.join("unet"), Some(Variant::Fp16)).unwrap();
    let shape = Transformer2DShape {
        channels: 320,
        heads: 8,
        layers: 1,
        cross_attention_dim: 768,
        groups: 32,
        linear_projection: false,
        upcast_attention: false,
    };
    let x: Vec<f32> = to_vec(Tensor::<4>::random([2, 320, 64, 64], Distribution::Normal(0.0, 1.0), &cpu));
    let skip: Vec<f32> = to_vec(Tensor::<4>::random([2, 960, 64, 64], Distribution::Normal(0.0, 1.0), &cpu));
    let ctx: Vec<f32> = to_vec(Tensor::<3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &cpu));
    let temb: Vec<f32> = to_vec(Tensor::<2>::random([2, 1280], Distribution::Normal(0.0, 1.0), &cpu));
    let run = |device: &Device| {
        let mut w = TensorLoader::new(File::open(&file).unwrap(), keep, device).unwrap();
        let transformer = Transformer2DModel::load(&mut w, "down_blocks.0.attentions.0", shape).unwrap();
        let resnet = ResnetBlock2D::load(&mut w, "up_blocks.3.resnets.0", 960, 320, Some(1280), 32, 1e-5).unwrap();
        w.finish().unwrap();
        let t = Instant::now();
        let a = transformer.forward(
            Tensor::from_data(TensorData::new(x.clone(), [2, 320, 64, 64]), device),
            &Tensor::from_data(TensorData::new(ctx.clone(), [2, 77, 768]), device),
        );
        let a = to_vec(a);
        let t_attn = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = resnet.forward(
            Tensor::from_data(TensorData::new(skip.clone(), [2, 960, 64, 64]), device),
            Some(&Tensor::from_data(TensorData::new(temb.clone(), [2, 1280]), device)),
        );
        let b = to_vec(b);
        (a, b, t_attn, t.elapsed().as_secs_f64())
    };
    let (ga, gb, gt1, gt2) = run(&gpu);
    println!("wgpu: transformer {gt1:.1} s, resnet {gt2:.1} s, uncaptured errors {}", websd::gpu::uncaptured_errors());
    let (ca, cb, ct1, ct2) = run(&cpu);
    println!("Flex: transformer {ct1:.1} s, resnet {ct2:.1} s");
    let diff = |p: &[f32], q: &[f32]| p.iter().zip(q).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let (d1, d2) = (diff(&ga, &ca), diff(&gb, &cb));
    println!("wgpu vs Flex: transformer {d1:e}, resnet {d2:e}");
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "the device rejected a buffer or kernel");
    assert!(d1 <= 1e-3 && d2 <= 1e-3);
    println!("ok");
}
