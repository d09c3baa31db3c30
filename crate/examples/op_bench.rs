//! Times the U-Net's main ops at SD 1.5's shapes for a batch-2 call, on the Flex CPU device or on wgpu (in
//! f32 or f16), to find what to optimise (`../shared/oracle` has no equivalent script):
//! `cargo run --release --example op_bench -- [latent size, default 32] [cpu|wgpu|wgpu-f16]`.
use std::time::Instant;

use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor};
use websd::models::{flex_attention, group_norm};

mod common;

/// Median of `reps` timed calls after one untimed call (autotune, allocations). Each call ends with a
/// [`read`], so a GPU's queue is drained.
fn time(name: &str, reps: usize, mut f: impl FnMut()) {
    f();
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!("{name}: {:.2} ms", ms[reps / 2]);
}

/// Reads `t` back: touching the bytes waits for a GPU's queue (`into_data` alone may return before).
fn read<const D: usize>(t: Tensor<D>) {
    std::hint::black_box(t.into_data().as_bytes().iter().step_by(4096).fold(0u8, |a, b| a ^ b));
}

/// softmax(q k^T / sqrt(d)) v with the score matrix materialised, `rows` queries at a time.
fn matmul_attention(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, rows: usize) -> Tensor<4> {
    let [_, _, n, d] = q.dims();
    let kt = k.clone().swap_dims(2, 3) * (1.0 / (d as f64).sqrt());
    let blocks = (0..n)
        .step_by(rows)
        .map(|first| {
            let q = q.clone().narrow(2, first, rows.min(n - first));
            softmax(q.matmul(kt.clone()), 3).matmul(v.clone())
        })
        .collect();
    Tensor::cat(blocks, 2)
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(32, |a| a.parse().expect("latent size"));
    let kind = std::env::args().nth(2).unwrap_or_else(|| "cpu".into());
    let d = common::device(&kind);
    let normal = Distribution::Normal(0.0, 1.0);
    for (c, s) in [(320, n), (640, n / 2), (1280, n / 4), (1280, n / 8)] {
        let x = Tensor::<4>::random([2, c, s, s], normal, &d);
        let conv = Conv2dConfig::new([c, c], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&d);
        time(&format!("conv3x3 {c}ch {s}x{s}"), 5, || {
            read(conv.forward(x.clone()));
        });
        let gn = GroupNormConfig::new(32, c).init(&d);
        time(&format!("groupnorm {c}ch {s}x{s} (websd's)"), 5, || {
            read(group_norm(&gn, x.clone()));
        });
        let tokens = Tensor::<3>::random([2, s * s, c], normal, &d);
        let lin = LinearConfig::new(c, c).init(&d);
        time(&format!("linear {c}->{c} x {} tokens", s * s), 5, || {
            read(lin.forward(tokens.clone()));
        });
        let ff = LinearConfig::new(c, c * 8).init(&d);
        time(&format!("linear {c}->{} (GEGLU proj) x {} tokens", c * 8, s * s), 5, || {
            read(ff.forward(tokens.clone()));
        });
        let q = Tensor::<4>::random([2, 8, s * s, c / 8], normal, &d);
        let k = Tensor::<4>::random([2, 8, 77, c / 8], normal, &d);
        for (what, keys) in [("self", &q), ("cross", &k)] {
            let shape = format!("[2,8,{},{}]x{}", s * s, c / 8, keys.dims()[2]);
            time(&format!("{what}-attention {shape}, burn"), 5, || {
                read(attention(q.clone(), keys.clone(), keys.clone(), None, None, AttentionModuleOptions::default()));
            });
            // Score blocks of at most 128 MiB (as f32), WebGPU's guaranteed binding size.
            let rows = (websd::gpu::MAX_BUFFER_BYTES as usize / (4 * 16 * keys.dims()[2])).min(s * s);
            time(&format!("{what}-attention {shape}, matmul+softmax in {rows}-query blocks"), 5, || {
                read(matmul_attention(&q, keys, keys, rows));
            });
            if kind == "cpu" {
                time(&format!("{what}-attention {shape}, websd's Flex kernel"), 5, || {
                    read(flex_attention::attention(q.clone(), keys.clone(), keys.clone()).expect("f32"));
                });
            }
        }
    }
}
