//! Times the U-Net's main ops at SD 1.5's shapes for a batch-2 call on the Flex CPU device (to find
//! what to optimise against torch; `web/../oracle` has no equivalent script):
//! `cargo run --release --example flex_op_bench -- [latent size, default 32]`.
use std::time::Instant;

use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, LinearConfig, PaddingConfig2d};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Tensor};
use websd::models::flex_attention;

fn time(name: &str, reps: usize, mut f: impl FnMut()) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!("{name}: {:.2} ms", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
}

fn main() {
    let d = Device::flex();
    let n: usize = std::env::args().nth(1).map_or(32, |a| a.parse().expect("latent size"));
    for (c, s) in [(320, n), (640, n / 2), (1280, n / 4), (1280, n / 8)] {
        let x = Tensor::<4>::random([2, c, s, s], Distribution::Normal(0.0, 1.0), &d);
        let conv = Conv2dConfig::new([c, c], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&d);
        time(&format!("conv3x3 {c}ch {s}x{s}"), 5, || {
            let _ = conv.forward(x.clone()).into_data();
        });
        let gn = GroupNormConfig::new(32, c).init(&d);
        time(&format!("groupnorm {c}ch {s}x{s}"), 5, || {
            let _ = gn.forward(x.clone()).into_data();
        });
        let tokens = Tensor::<3>::random([2, s * s, c], Distribution::Normal(0.0, 1.0), &d);
        let lin = LinearConfig::new(c, c).init(&d);
        time(&format!("linear {c}->{c} x {} tokens", s * s), 5, || {
            let _ = lin.forward(tokens.clone()).into_data();
        });
        let ff = LinearConfig::new(c, c * 8).init(&d);
        time(&format!("linear {c}->{} (GEGLU proj)", c * 8), 5, || {
            let _ = ff.forward(tokens.clone()).into_data();
        });
        let q = Tensor::<4>::random([2, 8, s * s, c / 8], Distribution::Normal(0.0, 1.0), &d);
        time(&format!("self-attention [2,8,{},{}]", s * s, c / 8), 5, || {
            let _ =
                attention(q.clone(), q.clone(), q.clone(), None, None, AttentionModuleOptions::default()).into_data();
        });
        time(&format!("self-attention [2,8,{},{}], websd's Flex kernel", s * s, c / 8), 5, || {
            let _ = flex_attention::attention(q.clone(), q.clone(), q.clone()).expect("f32").into_data();
        });
        let k = Tensor::<4>::random([2, 8, 77, c / 8], Distribution::Normal(0.0, 1.0), &d);
        time(&format!("cross-attention [2,8,{},{}]x77", s * s, c / 8), 5, || {
            let _ =
                attention(q.clone(), k.clone(), k.clone(), None, None, AttentionModuleOptions::default()).into_data();
        });
        time(&format!("cross-attention [2,8,{},{}]x77, websd's Flex kernel", s * s, c / 8), 5, || {
            let _ = flex_attention::attention(q.clone(), k.clone(), k.clone()).expect("f32").into_data();
        });
    }
}
