//! Scaled dot-product attention for the Flex CPU device, tiled over queries as well as keys.
//!
//! burn-flex 0.22's flash attention walks all of a head's queries (4096 at 512 px) against each
//! 64-key tile: its score tile (1 MiB) lives outside the fast caches, and its softmax calls the
//! scalar `expf` once per score. At SD 1.5's first self-attention (`[2, 8, 4096, 40]`) that ran at
//! 41 GFLOP/s, against 143 for the 320-channel 3x3 conv on the same device, and was about 5 s of a
//! 19 s U-Net call. Here each job is `QUERY_BLOCK` queries against `KEY_BLOCK`-key tiles (a
//! 64 KiB score tile), with the online softmax (running max, rescaled sums) done a row at a time in
//! a vectorisable loop whose `exp` is a polynomial, and the jobs spread over rayon's threads.
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Queries per job: with [`KEY_BLOCK`] keys, a 64 KiB f32 score tile.
const QUERY_BLOCK: usize = 64;
/// Keys per tile of the online softmax.
const KEY_BLOCK: usize = 256;

/// `softmax(q k^T / sqrt(head_dim)) v`, as burn's `attention` with no mask and the default scale.
/// Returns `None` (the caller uses burn's op) unless all three tensors are f32.
///
/// # Shapes
/// - q: `[batch, heads, queries, head_dim]`
/// - k: `[batch, heads, keys, head_dim]`
/// - v: `[batch, heads, keys, value_dim]`
/// - output: `[batch, heads, queries, value_dim]`
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Option<Tensor<4>> {
    if [q.dtype(), k.dtype(), v.dtype()].iter().any(|d| *d != DType::F32) {
        return None;
    }
    let device = q.device();
    let [batch, heads, queries, head_dim] = q.dims();
    let [_, _, keys, value_dim] = v.dims();
    let (q, k, v) = (q.into_data(), k.into_data(), v.into_data());
    let (q, k, v) = (q.as_slice::<f32>().ok()?, k.as_slice::<f32>().ok()?, v.as_slice::<f32>().ok()?);
    let shape = Shape { keys, head_dim, value_dim, scale: 1.0 / (head_dim as f32).sqrt() };
    let mut out = vec![0.0f32; batch * heads * queries * value_dim];
    if keys > 0 {
        let jobs: Vec<(usize, usize, &mut [f32])> = out
            .chunks_mut(queries * value_dim)
            .enumerate()
            .flat_map(|(head, o)| {
                o.chunks_mut(QUERY_BLOCK * value_dim).enumerate().map(move |(i, o)| (head, i * QUERY_BLOCK, o))
            })
            .collect();
        jobs.into_par_iter().for_each_init(Scratch::default, |scratch, (head, first, o)| {
            let rows = o.len() / value_dim;
            let q = &q[(head * queries + first) * head_dim..][..rows * head_dim];
            let k = &k[head * keys * head_dim..][..keys * head_dim];
            let v = &v[head * keys * value_dim..][..keys * value_dim];
            shape.query_block(q, k, v, o, scratch);
        });
    }
    let data = TensorData::new(out, [batch, heads, queries, value_dim]);
    Some(Tensor::from_data(data, &device))
}

/// Per-thread buffers, reused from job to job.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    row_max: Vec<f32>,
    row_sum: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Shape {
    keys: usize,
    head_dim: usize,
    value_dim: usize,
    scale: f32,
}

impl Shape {
    /// One block of query rows of one head: `q` `[rows, head_dim]`, `k` `[keys, head_dim]`,
    /// `v` `[keys, value_dim]`, into `out` `[rows, value_dim]` (zeroed).
    fn query_block(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], s: &mut Scratch) {
        let Self { keys, head_dim, value_dim, scale } = *self;
        let rows = out.len() / value_dim;
        s.scores.resize(rows * KEY_BLOCK, 0.0);
        s.row_max.clear();
        s.row_max.resize(rows, f32::NEG_INFINITY);
        s.row_sum.clear();
        s.row_sum.resize(rows, 0.0);
        for first in (0..keys).step_by(KEY_BLOCK) {
            let cols = KEY_BLOCK.min(keys - first);
            let scores = &mut s.scores[..rows * cols];
            // scores = scale * q k_tile^T: k's rows are read as columns.
            // SAFETY: every pointer and stride describes a slice borrowed above, in bounds for
            // the m x k, k x n and m x n matrices named.
            unsafe {
                gemm::gemm(
                    rows,
                    cols,
                    head_dim,
                    scores.as_mut_ptr(),
                    1,
                    cols as isize,
                    false,
                    q.as_ptr(),
                    1,
                    head_dim as isize,
                    k[first * head_dim..].as_ptr(),
                    head_dim as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            softmax_tile(scores, cols, out, value_dim, &mut s.row_max, &mut s.row_sum);
            // out += p v_tile
            // SAFETY: as above.
            unsafe {
                gemm::gemm(
                    rows,
                    value_dim,
                    cols,
                    out.as_mut_ptr(),
                    1,
                    value_dim as isize,
                    true,
                    scores.as_ptr(),
                    1,
                    cols as isize,
                    v[first * value_dim..].as_ptr(),
                    1,
                    value_dim as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        for (o, sum) in out.chunks_exact_mut(value_dim).zip(&s.row_sum) {
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// The online softmax step for one score tile, with AVX2 + FMA where the CPU has them (the crate is
/// built for baseline x86-64, SSE2 only).
fn softmax_tile(scores: &mut [f32], cols: usize, out: &mut [f32], dim: usize, max: &mut [f32], sum: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features it is compiled for were detected just above.
        return unsafe { softmax_tile_avx2(scores, cols, out, dim, max, sum) };
    }
    softmax_tile_any(scores, cols, out, dim, max, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_tile_avx2(scores: &mut [f32], cols: usize, out: &mut [f32], dim: usize, max: &mut [f32], sum: &mut [f32]) {
    softmax_tile_any(scores, cols, out, dim, max, sum)
}

/// Each score row becomes `exp(score - running max)`; the row's earlier output and sum are rescaled
/// when its maximum grows.
#[inline(always)]
fn softmax_tile_any(scores: &mut [f32], cols: usize, out: &mut [f32], dim: usize, max: &mut [f32], sum: &mut [f32]) {
    for (((row, o), m), l) in scores.chunks_exact_mut(cols).zip(out.chunks_exact_mut(dim)).zip(max).zip(sum) {
        let new_max = row_max(row).max(*m);
        if new_max > *m {
            // exp(-inf) = 0 on the first tile, where `o` and `l` are still zero.
            let correction = (*m - new_max).exp();
            o.iter_mut().for_each(|x| *x *= correction);
            *l *= correction;
            *m = new_max;
        }
        *l += exp_sub_sum(row, new_max);
    }
}

/// Largest value of `row`, with 8 independent lanes so that the loop vectorises.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = if *x > *l { *x } else { *l };
        }
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a })
}

/// `row[i] = exp(row[i] - max)`, returning the sum.
#[inline(always)]
fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c.iter_mut()) {
            *x = exp_nonpositive(*x - max);
            *l += *x;
        }
    }
    let mut total: f32 = lanes.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        total += *x;
    }
    total
}

/// `exp(x)` for `x <= 0` (NaN-free input), within 2.5e-7 relative of `f32::exp` (about 2 ulp) above
/// the clamp, branch-free so that loops over it vectorise (Cephes' `expf`: `x = n ln 2 + r`, a degree-6
/// polynomial in `r`, `2^n` from the exponent bits). Below -87 it returns `exp(-87)` (1.6e-38) instead of less: next to
/// a softmax row's largest term, 1, that is nothing.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer without `round`.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    // ln 2 in two parts, so that `r` keeps its low bits.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::attention as burn_attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn exp_matches_std_on_the_softmax_range() {
        let mut worst = 0.0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let rel = (exp_nonpositive(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert!(exp_nonpositive(-1e30) < 2e-38);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    /// softmax(q k^T / sqrt(d)) v in f64, one (batch, head) slab after another.
    fn reference(q: &[f32], k: &[f32], v: &[f32], [heads, queries, keys, d, dv]: [usize; 5]) -> Vec<f32> {
        let mut out = Vec::with_capacity(heads * queries * dv);
        for h in 0..heads {
            for i in 0..queries {
                let qi = &q[(h * queries + i) * d..][..d];
                let scores: Vec<f64> = (0..keys)
                    .map(|j| {
                        let kj = &k[(h * keys + j) * d..][..d];
                        qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..dv {
                    let x: f64 = weights.iter().enumerate().map(|(j, w)| w * v[(h * keys + j) * dv + c] as f64).sum();
                    out.push((x / total) as f32);
                }
            }
        }
        out
    }

    #[test]
    fn tiled_attention_is_as_close_to_f64_as_burns() {
        let device = Device::flex();
        let normal = Distribution::Normal(0.0, 2.0);
        // Query and key counts off the block sizes, and keys both below and above one tile.
        for (queries, keys) in [(1, 1), (70, 77), (130, 600), (64, 256)] {
            let q = Tensor::<4>::random([2, 3, queries, 8], normal, &device);
            let k = Tensor::<4>::random([2, 3, keys, 8], normal, &device);
            let v = Tensor::<4>::random([2, 3, keys, 5], normal, &device);
            let exact = reference(
                &q.to_data().try_to_vec::<f32>().unwrap(),
                &k.to_data().try_to_vec::<f32>().unwrap(),
                &v.to_data().try_to_vec::<f32>().unwrap(),
                [6, queries, keys, 8, 5],
            );
            let worst = |t: Tensor<4>| {
                let t = t.into_data().try_to_vec::<f32>().unwrap();
                t.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
            };
            let ours = worst(attention(q.clone(), k.clone(), v.clone()).expect("f32"));
            let burns = worst(burn_attention(q, k, v, None, None, AttentionModuleOptions::default()));
            println!("{queries}x{keys}: ours {ours:e}, burn's {burns:e}");
            // Rounding differs (the key order of the sums, the polynomial exp): allow some slack.
            assert!(ours <= 2.0 * burns + 1e-6, "{queries}x{keys}: {ours:e} from f64, burn's {burns:e}");
        }
    }
}
