//! Where a tiny txt2img run spends its time (text encoder, U-Net calls, decode, single ops):
//! `cargo run --release --example tiny_profile -- [model dir] [cpu|wgpu|wgpu-f16|wgpu-capped] [unet|vae]`;
//! `unet` stops after the U-Net calls, `vae` after the decodes (for a kernel profile of whole calls:
//! `CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=FILE`, summed by `scripts/profile-summary.py FILE`,
//! one warm call by `scripts/profile-summary.py FILE 10 --warm 5`).
use std::time::Instant;

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use websd::pipeline::StableDiffusion;

mod common;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "tests/fixtures/tiny-sd".into());
    let d = common::device(&std::env::args().nth(2).unwrap_or_else(|| "cpu".into()));
    let m = StableDiffusion::load_dir(std::path::Path::new(&dir), None, &d).unwrap();
    let time = |name: &str, f: &mut dyn FnMut()| {
        // The first call compiles the shaders (and natively autotunes): reported apart.
        let t = Instant::now();
        f();
        println!("{name} (first call): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        // Where the device measures its kernels (`websd::kernels::tune`; `WEBSD_KERNELS=...,tune`
        // forces it), as the pipeline does after its first step.
        let t = Instant::now();
        let found = pollster::block_on(websd::models::tuning::tune_pending(&d, websd::gpu::uncaptured_errors));
        if !found.is_empty() {
            println!("{name}: {} shapes measured in {:.1} s", found.len(), t.elapsed().as_secs_f64());
            for f in &found {
                println!("  {}", f.summary());
            }
        }
        let t = Instant::now();
        for _ in 0..5 {
            f();
        }
        println!("{name}: {:.1} ms", t.elapsed().as_secs_f64() * 200.0);
    };
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![49406i64; 77], [1, 77]), &d);
    time("clip", &mut || {
        let _ = m.text_encoder.forward(ids.clone()).last_hidden_state.into_data();
    });
    let x = Tensor::<4>::random([2, 4, 32, 32], Distribution::Normal(0.0, 1.0), &d);
    let ctx = Tensor::<3>::random([2, 77, 32], Distribution::Normal(0.0, 1.0), &d);
    time("unet call", &mut || {
        let _ = m.unet.forward(x.clone(), 500.0, ctx.clone(), None).into_data();
    });
    if std::env::args().nth(3).as_deref() == Some("unet") {
        return flush_profile();
    }
    let z = Tensor::<4>::random([1, 4, 32, 32], Distribution::Normal(0.0, 1.0), &d);
    time("vae decode", &mut || {
        let _ = m.vae_decoder.decode(z.clone(), 32 << 20).into_data();
    });
    if std::env::args().nth(3).as_deref() == Some("vae") {
        return flush_profile();
    }
    let s = Tensor::<4>::random([2, 64, 32, 32], Distribution::Normal(0.0, 1.0), &d);
    let gn = burn::nn::GroupNormConfig::new(32, 64).init(&d);
    time("group_norm [2,64,32,32] ours", &mut || {
        let _ = websd::models::group_norm(&gn, s.clone()).into_data();
    });
    time("group_norm [2,64,32,32] burn", &mut || {
        let _ = gn.forward(s.clone()).into_data();
    });
    let c32 = Tensor::<4>::random([2, 32, 32, 32], Distribution::Normal(0.0, 1.0), &d);
    let conv = burn::nn::conv::Conv2dConfig::new([32, 32], [3, 3])
        .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&d);
    time("conv 32->32 32x32 b2", &mut || {
        let _ = conv.forward(c32.clone()).into_data();
    });
    let c16 = Tensor::<4>::random([2, 64, 16, 16], Distribution::Normal(0.0, 1.0), &d);
    time("upsample_nearest [2,64,16,16]->32", &mut || {
        let _ = websd::models::resnet::upsample_nearest(c16.clone(), (32, 32)).into_data();
    });
    let q = Tensor::<4>::random([2, 8, 256, 8], Distribution::Normal(0.0, 1.0), &d);
    time("attention [2,8,256,8]", &mut || {
        let _ = burn::tensor::module::attention(q.clone(), q.clone(), q.clone(), None, None, Default::default())
            .into_data();
    });
    let k = Tensor::<4>::random([2, 8, 77, 8], Distribution::Normal(0.0, 1.0), &d);
    time("cross attention [2,8,256,8]x77", &mut || {
        let _ = burn::tensor::module::attention(q.clone(), k.clone(), k.clone(), None, None, Default::default())
            .into_data();
    });
    let tiny = Tensor::<4>::random([2, 4, 32, 32], Distribution::Normal(0.0, 1.0), &d);
    time("100 tiny adds", &mut || {
        let mut t = tiny.clone();
        for _ in 0..100 {
            t = t + 1.0;
        }
        let _ = t.into_data();
    });
}

/// cubecl writes its kernel profile (`CUBECL_DEBUG_OPTION=profile`) from another thread: without a
/// pause before exiting, the last calls' launches can be missing from the log.
fn flush_profile() {
    std::thread::sleep(std::time::Duration::from_secs(2));
}
