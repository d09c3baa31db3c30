//! Times the U-Net's main ops at SD 1.5's shapes for a batch-2 call, on the Flex CPU device or on wgpu (in
//! f32 or f16), to find what to optimise (`../shared/oracle` has no equivalent script):
//! `cargo run --release --example op_bench -- [latent size, default 32] [cpu|wgpu|wgpu-f16|wgpu-capped]
//! [peak GFLOP/s] [peak GB/s] [all|conv|attention|norm|fused|tilings|blocks] [width divisor, default 1]`.
//!
//! A roofline: each op's FLOPs and the bytes it must at least move (inputs, weights and output once),
//! achieved GFLOP/s and GB/s, and their share of the peaks given on the command line (the device's
//! data sheet; `-` or omitted, no share is printed). `conv` or `attention` times only those ops,
//! `norm` GroupNorm + SiLU and LayerNorm, burn's against our kernel in both layouts ([`norms`],
//! also at the end of `all`), `fused` what the kernels' epilogues, GEGLU and head-swap-free attention
//! save against the same work unfused ([`fused`], at the very end of `all`),
//! `tilings` the U-Net's convolutions in every tiling of our kernel ([`tilings`]), `blocks` SD's 3x3
//! convolutions in several blocks of our lane kernel ([`blocks`]); a width
//! divisor of 10 gives the channels of the SD-shaped bench model (32/64/128/128), 10 at latent size 32
//! the tiny model's first two levels.
use std::time::Instant;

use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor};
use websd::kernels::conv2d::Add;
use websd::models::{flex_attention, group_norm};

mod common;

/// The device's peaks from the command line, for the roofline's shares.
#[derive(Clone, Copy)]
struct Peaks {
    gflops: Option<f64>,
    gbytes: Option<f64>,
}

/// Median milliseconds of `reps` timed calls after one untimed call (autotune, allocations). Each call
/// ends with a [`read`], so a GPU's queue is drained.
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[reps / 2]
}

/// Times `f` and prints the median with its roofline figures; returns the median.
fn time(name: &str, flops: f64, bytes: f64, peaks: Peaks, f: impl FnMut()) -> f64 {
    let ms = median_ms(5, f);
    let gflops = flops / ms / 1e6;
    let gbytes = bytes / ms / 1e6;
    let share = |achieved: f64, peak: Option<f64>| {
        peak.map_or(String::new(), |p| format!(" ({:.1}% of peak)", 100.0 * achieved / p))
    };
    println!(
        "{name}: {ms:.2} ms, {:.3} GFLOP, {gflops:.1} GFLOP/s{}, {:.1} MB, {gbytes:.1} GB/s{}",
        flops / 1e9,
        share(gflops, peaks.gflops),
        bytes / 1e6,
        share(gbytes, peaks.gbytes)
    );
    ms
}

/// Reads `t` back: touching the bytes waits for a GPU's queue (`into_data` alone may return before).
fn read<const D: usize>(t: Tensor<D>) {
    std::hint::black_box(t.into_data().as_bytes().iter().step_by(4096).fold(0u8, |a, b| a ^ b));
}

/// The U-Net's convolutions at latent size `n` (batch 2; the distinct shapes, widest first), each with
/// burn's op and with our kernel in every tiling, then the tiling
/// [`Tiling::for_workgroups`](websd::kernels::conv2d::Tiling::for_workgroups) picks for a few
/// workgroup targets: what `kernels::Choice` is set from.
fn tilings(n: usize, divisor: usize, d: &burn::tensor::Device, elem: f64, peaks: Peaks) {
    use websd::kernels::conv2d::{Tiling, conv2d_tiled};
    // (c_in, c_out, size, kernel, stride)
    let shapes = [
        (320, 320, n, 3, 1),
        (640, 640, n / 2, 3, 1),
        (1280, 1280, n / 4, 3, 1),
        (1280, 1280, n / 8, 3, 1),
        (2560, 1280, n / 8, 3, 1),
        (2560, 1280, n / 4, 3, 1),
        (1920, 640, n / 2, 3, 1),
        (960, 320, n, 3, 1),
        (320, 640, n / 2, 3, 1),
        (320, 320, n, 3, 2),
        (960, 320, n, 1, 1),
        (4, 320, n, 3, 1),
        (320, 4, n, 3, 1),
    ];
    let normal = Distribution::Normal(0.0, 1.0);
    for (c_in, c_out, s, k, stride) in shapes {
        let (c_in, c_out) = ((c_in / divisor).max(1), (c_out / divisor).max(1));
        let pad = k / 2;
        let x = Tensor::<4>::random([2, c_in, s, s], normal, d);
        let w = Tensor::<4>::random([c_out, c_in, k, k], normal, d) * 0.05;
        let bias = Tensor::<1>::random([c_out], normal, d);
        let out = (s + 2 * pad - k) / stride + 1;
        let pixels = 2 * out * out;
        let depth = c_in * k * k;
        let flops = 2.0 * (pixels * c_out * depth) as f64;
        let bytes = elem * (2 * c_in * s * s + c_out * depth + pixels * c_out) as f64;
        let name = format!("conv{k}x{k}/{stride} {c_in}->{c_out} {s}x{s}");
        let options = burn::tensor::ops::ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1);
        let burn_ms = time(&format!("{name}, burn's"), flops, bytes, peaks, || {
            read(burn::tensor::module::conv2d(x.clone(), w.clone(), Some(bias.clone()), options.clone()));
        });
        let mut best = (f64::INFINITY, Tiling::SMALL);
        // The scalar kernel's tilings, then the vectorized kernel's (named "...+vec4"), then it reading
        // each slice ahead ("...+vec4+ahead").
        let scalar = Tiling::TILES.map(|(bm, bn)| Tiling { bm, bn, ..Tiling::SMALL });
        let vectorized: Vec<Tiling> = scalar.iter().filter_map(|t| t.vectorized()).collect();
        let prefetched: Vec<Tiling> = vectorized.iter().filter_map(|t| t.prefetched()).collect();
        for tile in scalar.into_iter().chain(vectorized).chain(prefetched) {
            for splits in [1, 2, 4, 8, 16] {
                let tiling = Tiling { splits, ..tile };
                let ms = time(&format!("{name}, websd's {}", label(tiling)), flops, bytes, peaks, || {
                    read(
                        conv2d_tiled(&x, &w, Some(&bias), stride, [pad; 4], tiling, Add::NONE)
                            .expect("a cubecl device"),
                    );
                });
                if ms < best.0 {
                    best = (ms, tiling);
                }
            }
        }
        let picks: Vec<String> = [0, 2, 4, 8, 16, 132, 264, 528]
            .iter()
            .map(|&wg| {
                let t = if wg == 0 { Tiling::SMALL } else { Tiling::for_workgroups(c_out, pixels, depth, wg) };
                format!("{wg}:{}", label(t))
            })
            .collect();
        println!(
            "{name}: burn's {burn_ms:.3} ms, best websd's {} {:.3} ms ({:.3}x burn's, {:.1} GFLOP/s); for_workgroups picks {}",
            label(best.1),
            best.0,
            best.0 / burn_ms,
            flops / best.0 / 1e6,
            picks.join(" ")
        );
    }
}

/// A tiling as `tilings` prints it: `BMxBN/SPLITS`, then `+vec4` for the vectorized kernel and
/// `+vec4+ahead` for it reading each slice ahead (both of which scripts/bench-gpu.sh's choice of a
/// workgroup target leaves out: `for_workgroups` picks scalar ones).
fn label(t: websd::kernels::conv2d::Tiling) -> String {
    let kernel = match (t.vectors, t.prefetch) {
        (false, _) => "",
        (true, false) => "+vec4",
        (true, true) => "+vec4+ahead",
    };
    format!("{}x{}/{}{kernel}", t.bm, t.bn, t.splits)
}

/// SD's four 3x3 convolutions at latent size `n` (batch 2): burn's op, then our lane kernel
/// ([`conv2d_lanes`](websd::kernels::conv2d::Block)) in several blocks (channels x rows x columns per
/// lane, 8 lanes a workgroup) and in the block `Block::for_shape` picks: what that rule is set from.
fn blocks(n: usize, divisor: usize, d: &burn::tensor::Device, elem: f64, peaks: Peaks) {
    use websd::kernels::conv2d::{Block, conv2d_blocked};
    let normal = Distribution::Normal(0.0, 1.0);
    for (c, s) in [(320, n), (640, n / 2), (1280, n / 4), (1280, n / 8)] {
        let c = c / divisor;
        let x = Tensor::<4>::random([2, c, s, s], normal, d);
        let w = Tensor::<4>::random([c, c, 3, 3], normal, d) * 0.05;
        let bias = Tensor::<1>::random([c], normal, d);
        let (pixels, cf) = ((2 * s * s) as f64, c as f64);
        let (flops, bytes) = (2.0 * pixels * cf * cf * 9.0, elem * (2.0 * pixels * cf + 9.0 * cf * cf + cf));
        let name = format!("conv3x3 {c}ch {s}x{s}");
        let options = burn::tensor::ops::ConvOptions::new([1; 2], [1; 2], [1, 1], 1);
        let burn_ms = time(&format!("{name}, burn's"), flops, bytes, peaks, || {
            read(burn::tensor::module::conv2d(x.clone(), w.clone(), Some(bias.clone()), options.clone()));
        });
        // Our implicit GEMM in the device's tiling, and burn's direct kernel by name: what runs on
        // SwiftShader instead.
        let tiling = websd::kernels::conv_tiling(c, 2 * s * s, c * 9);
        let ms = time(&format!("{name}, websd's implicit GEMM {tiling:?}"), flops, bytes, peaks, || {
            let out = websd::kernels::conv2d::conv2d_tiled(&x, &w, Some(&bias), 1, [1; 4], tiling, Add::NONE);
            read(out.expect("a cubecl device"));
        });
        println!("{name}: websd's implicit GEMM / burn's = {:.3}", ms / burn_ms);
        let ms = time(&format!("{name}, burn's direct kernel"), flops, bytes, peaks, || {
            let out = websd::kernels::conv2d::burn_direct(&x, &w, Some(&bias), options.clone());
            read(out.expect("a cubecl device"));
        });
        println!("{name}: burn's direct kernel / burn's = {:.3}", ms / burn_ms);
        let picked = Block::for_shape(c, 2, s, s, websd::kernels::choice().lane_accumulators);
        let tried = [(8, 4, 8), (16, 4, 4), (32, 2, 4), (32, 1, 4), (16, 8, 8), (16, 4, 8)];
        let blocks = tried.map(|(ch, rows, cols)| Block { ch, rows, cols, lanes: Block::LANES });
        let extra = (!blocks.contains(&picked)).then_some(picked);
        for block in blocks.into_iter().filter(|b| b.rows <= s && b.cols <= s).chain(extra) {
            let Block { ch, rows, cols, .. } = block;
            let what = if block == picked { " (picked)" } else { "" };
            let ms = time(&format!("{name}, websd's {ch}ch x {rows}x{cols}{what}"), flops, bytes, peaks, || {
                read(conv2d_blocked(&x, &w, Some(&bias), 1, [1; 4], block, Add::NONE).expect("a cubecl device"));
            });
            println!("{name}: websd's {ch}ch x {rows}x{cols}{what} / burn's = {:.3}", ms / burn_ms);
        }
    }
}

/// Our linear layer (plus `residual` in its last step): the row kernel, the tiled GEMM (the device's
/// tiling) or the lane kernel (the device's block).
fn our_linear(
    kernel: &str,
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
) -> Tensor<2> {
    use websd::kernels::linear;
    let out = match kernel {
        "tiled kernel" => linear::linear_tiled(x, weight, bias, residual, None),
        "lane kernel" => {
            let block = linear::lane_block(x.dims()[0], weight.dims()[1], websd::kernels::choice().lane_accumulators);
            linear::linear_blocked(x, weight, bias, residual, block)
        }
        _ => linear::linear(x, weight, bias, residual),
    };
    out.expect("a cubecl tensor")
}

/// GroupNorm + SiLU (every ResNet block's) and LayerNorm (the transformer blocks') at the U-Net's
/// levels: burn's module and activation against our kernel in both layouts. The bytes are one read
/// and one write (our kernel reads its block three times, from cache where it fits).
fn norms(n: usize, divisor: usize, d: &burn::tensor::Device, elem: f64, peaks: Peaks) {
    use burn::nn::LayerNormConfig;
    use burn::tensor::activation::silu;
    use websd::kernels::norm::{Layout, group_norm, layer_norm};
    let normal = Distribution::Normal(0.0, 1.0);
    for (c, s) in [(320, n), (640, n / 2), (1280, n / 4), (1280, n / 8)] {
        let c = c / divisor;
        let x = Tensor::<4>::random([2, c, s, s], normal, d);
        let values = (2 * c * s * s) as f64;
        let gn = GroupNormConfig::new(32, c).init(d);
        let (gamma, beta) = (gn.gamma.as_ref().unwrap().val(), gn.beta.as_ref().unwrap().val());
        let name = format!("groupnorm+silu {c}ch {s}x{s}");
        let burn_ms = time(&format!("{name}, burn's"), 10.0 * values, elem * 2.0 * values, peaks, || {
            read(silu(gn.forward(x.clone())));
        });
        for layout in [Layout::Lane, Layout::Workgroup] {
            let ours_ms =
                time(&format!("{name}, websd's {layout:?}"), 10.0 * values, elem * 2.0 * values, peaks, || {
                    read(group_norm(&x, 32, Some((&gamma, &beta)), 1e-5, true, layout).expect("a cubecl device"));
                });
            println!("{name}: websd's {layout:?} / burn's = {:.3}", ours_ms / burn_ms);
        }
        let tokens = Tensor::<3>::random([2, s * s, c], normal, d);
        let ln = LayerNormConfig::new(c).init(d);
        let beta = ln.beta.as_ref().unwrap().val();
        let name = format!("layernorm {c} x {} tokens", s * s);
        let burn_ms = time(&format!("{name}, burn's"), 8.0 * values, elem * 2.0 * values, peaks, || {
            read(ln.forward(tokens.clone()));
        });
        for layout in [Layout::Lane, Layout::Workgroup] {
            let ours_ms =
                time(&format!("{name}, websd's {layout:?}"), 8.0 * values, elem * 2.0 * values, peaks, || {
                    read(layer_norm(&tokens, Some((&ln.gamma.val(), &beta)), 1e-5, layout).expect("a cubecl device"));
                });
            println!("{name}: websd's {layout:?} / burn's = {:.3}", ours_ms / burn_ms);
        }
    }
}

/// What fusing pays, at the U-Net's levels: our convolution and linear layer with the residual (and
/// the convolution with a ResNet block's time-embedding term) added in their last step against the
/// same kernel followed by burn's add; GEGLU as our one kernel against burn's ops; our attention on
/// the projections' `[batch, tokens, heads * width]` against the same kernel after head swaps (and
/// the swap back). Bytes: each side's inputs and output once.
fn fused(n: usize, divisor: usize, d: &burn::tensor::Device, elem: f64, peaks: Peaks) {
    use websd::kernels::{attention as ours_attention, conv2d, geglu};
    let normal = Distribution::Normal(0.0, 1.0);
    let ratio = |name: &str, apart: f64, fused: f64| println!("{name}: fused / apart = {:.3}", fused / apart);
    for (c, s) in [(320, n), (640, n / 2), (1280, n / 4), (1280, n / 8)] {
        let c = c / divisor;
        let x = Tensor::<4>::random([2, c, s, s], normal, d);
        let w = Tensor::<4>::random([c, c, 3, 3], normal, d) * 0.05;
        let bias = Tensor::<1>::random([c], normal, d);
        let residual = Tensor::<4>::random([2, c, s, s], normal, d);
        let term = Tensor::<2>::random([2, c], normal, d);
        let values = (2 * c * s * s) as f64;
        let flops = 2.0 * values * (9 * c) as f64;
        let bytes = elem * (2.0 * values + (9 * c * c) as f64);
        let conv = |add: Add| conv2d::conv2d(&x, &w, Some(&bias), 1, [1; 4], add).expect("a cubecl device");
        let name = format!("conv3x3 {c}ch {s}x{s} + residual");
        let apart = time(&format!("{name}, then burn's add"), flops, bytes + elem * values, peaks, || {
            read(conv(Add::NONE) + residual.clone());
        });
        let add = Add { per_batch: None, residual: Some(&residual) };
        let one = time(&format!("{name}, fused"), flops, bytes + elem * values, peaks, || read(conv(add)));
        ratio(&name, apart, one);
        let name = format!("conv3x3 {c}ch {s}x{s} + time embedding");
        let apart = time(&format!("{name}, then burn's add"), flops, bytes, peaks, || {
            read(conv(Add::NONE) + term.clone().reshape([2, c, 1, 1]));
        });
        let add = Add { per_batch: Some(&term), residual: None };
        let one = time(&format!("{name}, fused"), flops, bytes, peaks, || read(conv(add)));
        ratio(&name, apart, one);

        let tokens = 2 * s * s;
        let rows = Tensor::<2>::random([tokens, c], normal, d);
        let weight = Tensor::<2>::random([c, c], normal, d) * 0.05;
        let rows_residual = Tensor::<2>::random([tokens, c], normal, d);
        let (flops, bytes) = (2.0 * (tokens * c * c) as f64, elem * (3 * tokens * c + c * c) as f64);
        // Our kernel for the device: the lane kernel on CPU devices, else the tiled GEMM.
        let kernel = if websd::kernels::choice().lanes { "lane kernel" } else { "tiled kernel" };
        let lin = |r: Option<&Tensor<2>>| our_linear(kernel, &rows, &weight, Some(&bias), r);
        let name = format!("linear {c}->{c} x {tokens} tokens + residual");
        let apart = time(&format!("{name}, then burn's add"), flops, bytes, peaks, || {
            read(lin(None) + rows_residual.clone());
        });
        let one = time(&format!("{name}, fused"), flops, bytes, peaks, || read(lin(Some(&rows_residual))));
        ratio(&name, apart, one);

        let h = Tensor::<2>::random([tokens, 8 * c], normal, d);
        let name = format!("geglu {tokens} x 2 x {}", 4 * c);
        let (flops, bytes) = (20.0 * (tokens * 4 * c) as f64, elem * (3 * tokens * 4 * c) as f64);
        let apart = time(&format!("{name}, burn's ops"), flops, bytes, peaks, || {
            let (value, gate) = (h.clone().narrow(1, 0, 4 * c), h.clone().narrow(1, 4 * c, 4 * c));
            read(value * burn::tensor::activation::gelu(gate));
        });
        let one =
            time(&format!("{name}, websd's"), flops, bytes, peaks, || read(geglu::geglu(&h).expect("a cubecl device")));
        ratio(&name, apart, one);

        let heads = 8;
        let [q, k] = [s * s, s * s].map(|t| Tensor::<3>::random([2, t, c], normal, d));
        let head_dim = c / heads;
        let (flops, bytes) = (4.0 * (2 * heads * s * s * s * s * head_dim) as f64, elem * (4 * 2 * s * s * c) as f64);
        let name = format!("self-attention [2,{heads},{},{head_dim}] from [batch, tokens, {c}]", s * s);
        let apart = time(&format!("{name}, head swaps around websd's kernel"), flops, bytes, peaks, || {
            let split = |t: &Tensor<3>| t.clone().reshape([2, s * s, heads, head_dim]).swap_dims(1, 2);
            let out = ours_attention::attention(&split(&q), &split(&k), &split(&k)).expect("a cubecl device");
            read(out.swap_dims(1, 2).reshape([2, s * s, c]));
        });
        let one = time(&format!("{name}, websd's on the projections"), flops, bytes, peaks, || {
            read(ours_attention::attention_tokens(&q, &k, &k, heads).expect("a cubecl device"));
        });
        ratio(&name, apart, one);
    }
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
    let peak = |i: usize| {
        std::env::args().nth(i).filter(|a| !a.is_empty() && a != "-").map(|a| a.parse::<f64>().expect("a peak figure"))
    };
    let peaks = Peaks { gflops: peak(3), gbytes: peak(4) };
    let only = std::env::args().nth(5).unwrap_or_else(|| "all".into());
    let divisor: usize = std::env::args().nth(6).map_or(1, |a| a.parse().expect("a width divisor"));
    let d = common::device(&kind);
    let normal = Distribution::Normal(0.0, 1.0);
    let elem = match Tensor::<1>::zeros([1], &d).dtype() {
        burn::tensor::DType::F16 => 2.0,
        _ => 4.0,
    };
    if only == "tilings" {
        return tilings(n, divisor, &d, elem, peaks);
    }
    if only == "blocks" {
        return blocks(n, divisor, &d, elem, peaks);
    }
    if only == "norm" {
        return norms(n, divisor, &d, elem, peaks);
    }
    if only == "fused" {
        return fused(n, divisor, &d, elem, peaks);
    }
    for (c, s) in [(320, n), (640, n / 2), (1280, n / 4), (1280, n / 8)] {
        let c = c / divisor;
        let x = Tensor::<4>::random([2, c, s, s], normal, &d);
        let conv = Conv2dConfig::new([c, c], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&d);
        let (pixels, c) = ((2 * s * s) as f64, c as f64);
        let (flops, bytes) = (2.0 * pixels * c * c * 9.0, elem * (2.0 * pixels * c + 9.0 * c * c + c));
        if only != "attention" {
            let burn_ms = time(&format!("conv3x3 {c}ch {s}x{s}, burn's"), flops, bytes, peaks, || {
                read(conv.forward(x.clone()));
            });
            let ours_ms = time(&format!("conv3x3 {c}ch {s}x{s}, websd's"), flops, bytes, peaks, || {
                let bias = conv.bias.as_ref().map(|b| b.val());
                read(
                    websd::kernels::conv2d::conv2d(&x, &conv.weight.val(), bias.as_ref(), 1, [1; 4], Add::NONE)
                        .expect("a cubecl device"),
                );
            });
            println!("conv3x3 {c}ch {s}x{s}: websd's / burn's = {:.3}", ours_ms / burn_ms);
        }
        let c = c as usize;
        if only == "all" {
            let gn = GroupNormConfig::new(32, c).init(&d);
            let values = (2 * c * s * s) as f64;
            time(&format!("groupnorm {c}ch {s}x{s} (websd's)"), 8.0 * values, elem * 2.0 * values, peaks, || {
                read(group_norm(&gn, x.clone()));
            });
            let tokens = Tensor::<3>::random([2, s * s, c], normal, &d);
            let lin = LinearConfig::new(c, c).init(&d);
            let (t, cf) = ((2 * s * s) as f64, c as f64);
            time(
                &format!("linear {c}->{c} x {} tokens", s * s),
                2.0 * t * cf * cf,
                elem * (2.0 * t * cf + cf * cf),
                peaks,
                || {
                    read(lin.forward(tokens.clone()));
                },
            );
            if kind != "cpu" {
                let rows = tokens.clone().reshape([2 * s * s, c]);
                let bias = lin.bias.as_ref().map(|b| b.val());
                for kernel in ["kernel", "tiled kernel", "lane kernel"] {
                    time(
                        &format!("linear {c}->{c} x {} tokens, websd's {kernel}", s * s),
                        2.0 * t * cf * cf,
                        elem * (2.0 * t * cf + cf * cf),
                        peaks,
                        || read(our_linear(kernel, &rows, &lin.weight.val(), bias.as_ref(), None)),
                    );
                }
            }
            let ff = LinearConfig::new(c, c * 8).init(&d);
            let (flops, bytes) = (2.0 * t * cf * cf * 8.0, elem * (t * cf * 9.0 + cf * cf * 8.0));
            time(&format!("linear {c}->{} (GEGLU proj) x {} tokens", c * 8, s * s), flops, bytes, peaks, || {
                read(ff.forward(tokens.clone()));
            });
            if kind != "cpu" {
                let rows = tokens.clone().reshape([2 * s * s, c]);
                let bias = ff.bias.as_ref().map(|b| b.val());
                let name = format!("linear {c}->{} (GEGLU proj) x {} tokens", c * 8, s * s);
                for kernel in ["kernel", "tiled kernel", "lane kernel"] {
                    time(&format!("{name}, websd's {kernel}"), flops, bytes, peaks, || {
                        read(our_linear(kernel, &rows, &ff.weight.val(), bias.as_ref(), None))
                    });
                }
            }
        }
        if only == "conv" {
            continue;
        }
        let q = Tensor::<4>::random([2, 8, s * s, c / 8], normal, &d);
        let k = Tensor::<4>::random([2, 8, 77, c / 8], normal, &d);
        for (what, keys) in [("self", &q), ("cross", &k)] {
            let shape = format!("[2,8,{},{}]x{}", s * s, c / 8, keys.dims()[2]);
            let (n, m, hd) = ((s * s) as f64, keys.dims()[2] as f64, (c / 8) as f64);
            let (flops, bytes) = (4.0 * 16.0 * n * m * hd, elem * 16.0 * (2.0 * n * hd + 2.0 * m * hd));
            time(&format!("{what}-attention {shape}, burn"), flops, bytes, peaks, || {
                read(attention(q.clone(), keys.clone(), keys.clone(), None, None, AttentionModuleOptions::default()));
            });
            // Score blocks of at most 128 MiB (as f32), WebGPU's guaranteed binding size.
            let rows = (websd::gpu::MAX_BUFFER_BYTES as usize / (4 * 16 * keys.dims()[2])).min(s * s);
            time(
                &format!("{what}-attention {shape}, matmul+softmax in {rows}-query blocks"),
                flops,
                bytes,
                peaks,
                || {
                    read(matmul_attention(&q, keys, keys, rows));
                },
            );
            if kind != "cpu" {
                for r in [1, 2, 4, 8] {
                    time(
                        &format!("{what}-attention {shape}, websd's kernel, {r} queries a lane"),
                        flops,
                        bytes,
                        peaks,
                        || {
                            read(
                                websd::kernels::attention::attention_blocked(&q, keys, keys, false, r)
                                    .expect("a cubecl tensor"),
                            );
                        },
                    );
                }
            }
            if kind == "cpu" {
                time(&format!("{what}-attention {shape}, websd's Flex kernel"), flops, bytes, peaks, || {
                    read(flex_attention::attention(q.clone(), keys.clone(), keys.clone()).expect("f32"));
                });
            }
        }
    }
    if only == "all" && kind != "cpu" {
        norms(n, divisor, &d, elem, peaks);
        fused(n, divisor, &d, elem, peaks);
    }
}
