//! Attention with the softmax computed online, a few query rows per invocation, for CPU-backed
//! adapters.
//!
//! On SwiftShader (the headless browser's WebGPU) burn's attention kernel ran the tiny U-Net's
//! `[2, 8, 256, 8]` self-attention at 0.3 GFLOP/s (114 ms a call) and matmul + softmax was slower
//! still: both move tiles through workgroup memory behind barriers, which a CPU emulates per SIMD
//! group. Here each invocation walks the keys once for its `r` queries of one head (running max,
//! rescaled sum and output, all f32): each key and value is loaded once for all `r`, which took
//! 0.59-0.67x the time of one query per lane on SwiftShader at the tiny and SD-shaped widths
//! (`op_bench 32 wgpu-capped - - attention 10`, BENCHMARKS.md). No score matrix is materialised, so
//! no query blocks are needed.

use burn::tensor::Tensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;

/// Queries per workgroup.
const LANES: usize = 64;
/// The largest head width the kernel unrolls (SD 1.5's deepest level: 1280 / 8).
pub const MAX_HEAD_DIM: usize = 160;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_rows<E: Float>(
    q: &[E],
    k: &[E],
    v: &[E],
    output: &mut [E],
    queries: usize,
    keys: usize,
    heads: usize,
    blocks_per_head: usize,
    lanes: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] causal: bool,
    #[comptime] r: usize,
    #[comptime] tokens_major: bool,
    #[define(E)] _dtype: ElemType,
) {
    let lane = (CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize) * LANES + UNIT_POS_X as usize;
    if lane >= lanes {
        terminate!();
    }
    // This lane's `r` consecutive queries of one head; those past the head's last read the last
    // one and write nothing.
    let head = lane / blocks_per_head;
    let q0 = (lane % blocks_per_head) * r;
    // `[batch, heads, tokens, width]`, or `[batch, tokens, heads, width]` (the projections as they
    // come, no head swaps): where a (batch, head) starts and how far apart its tokens are.
    let batch = head / heads;
    let h = head % heads;
    // Tokens of a head lie `spread` widths apart: `heads` tokens-major, 1 heads-major.
    let spread = select(tokens_major, heads, 1usize);
    let qk_step = spread * head_dim;
    let vo_step = spread * value_dim;
    let q_base = batch * queries * heads * head_dim + h * select(tokens_major, head_dim, queries * head_dim);
    let k_base = batch * keys * heads * head_dim + h * select(tokens_major, head_dim, keys * head_dim);
    let v_base = batch * keys * heads * value_dim + h * select(tokens_major, value_dim, keys * value_dim);
    let o_base = batch * queries * heads * value_dim + h * select(tokens_major, value_dim, queries * value_dim);
    let mut qr = Array::<f32>::new(r * head_dim);
    #[unroll]
    for i in 0..r {
        let mut query = q0 + i;
        if query >= queries {
            query = queries - 1;
        }
        let at = q_base + query * qk_step;
        #[unroll]
        for c in 0..head_dim {
            qr[i * head_dim + c] = f32::cast_from(q[at + c]) * scale;
        }
    }
    let mut acc = Array::<f32>::new(r * value_dim);
    #[unroll]
    for i in 0..r * value_dim {
        acc[i] = 0.0;
    }
    let mut max = Array::<f32>::new(r);
    let mut sum = Array::<f32>::new(r);
    #[unroll]
    for i in 0..r {
        max[i] = f32::new(-1.0e30);
        sum[i] = 0.0;
    }
    // Causal (queries == keys): query i sees keys 0..=i, so the block's last query all it needs.
    let mut end = keys;
    if causal {
        end = q0 + r;
        if end > queries {
            end = queries;
        }
    }
    let mut kr = Array::<f32>::new(head_dim);
    let mut vr = Array::<f32>::new(value_dim);
    for j in 0..end {
        // Each key and value is loaded once for the lane's `r` queries.
        #[unroll]
        for c in 0..head_dim {
            kr[c] = f32::cast_from(k[k_base + j * qk_step + c]);
        }
        #[unroll]
        for c in 0..value_dim {
            vr[c] = f32::cast_from(v[v_base + j * vo_step + c]);
        }
        #[unroll]
        for i in 0..r {
            let mut s = 0.0f32;
            #[unroll]
            for c in 0..head_dim {
                s += qr[i * head_dim + c] * kr[c];
            }
            // Key 0 comes first and every query sees it, so `max` is real before a masked key.
            if causal && j > q0 + i {
                s = f32::new(-1.0e30);
            }
            if s > max[i] {
                let c = (max[i] - s).exp();
                sum[i] *= c;
                #[unroll]
                for d in 0..value_dim {
                    acc[i * value_dim + d] *= c;
                }
                max[i] = s;
            }
            let p = (s - max[i]).exp();
            sum[i] += p;
            #[unroll]
            for d in 0..value_dim {
                acc[i * value_dim + d] += p * vr[d];
            }
        }
    }
    #[unroll]
    for i in 0..r {
        if q0 + i < queries {
            let at = o_base + (q0 + i) * vo_step;
            #[unroll]
            for d in 0..value_dim {
                output[at + d] = E::cast_from(acc[i * value_dim + d] / sum[i]);
            }
        }
    }
}

/// Queries per lane of `attention_rows` for a head of `head_dim` (and `value_dim`) within
/// `registers` f32 values of queries and accumulators: a power of two up to 8.
pub fn queries_per_lane(head_dim: usize, value_dim: usize, registers: usize) -> usize {
    [8, 4, 2, 1].into_iter().find(|&r| r * (head_dim + value_dim) <= registers).unwrap_or(1)
}

/// `softmax(q kᵀ / sqrt(head_dim)) v` (burn's `attention` with no mask and the default scale), or `None`
/// when the tensors are not f32/f16 cubecl tensors, there are no keys, or a head is wider than
/// [`MAX_HEAD_DIM`]. See [`attention_causal`] for the causal form.
///
/// # Shapes
/// - q: `[batch, heads, queries, head_dim]`
/// - k: `[batch, heads, keys, head_dim]`
/// - v: `[batch, heads, keys, value_dim]`
/// - output: `[batch, heads, queries, value_dim]`
pub fn attention(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<4>> {
    launch(q, k, v, false, None)
}

/// [`attention`] (or [`attention_causal`]) with `r` queries per lane (see [`queries_per_lane`] for
/// the device's).
pub fn attention_blocked(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, causal: bool, r: usize) -> Option<Tensor<4>> {
    if causal && q.dims()[2] != k.dims()[2] {
        return None;
    }
    launch(q, k, v, causal, Some(r))
}

/// [`attention`] with burn's `is_causal` mask for as many queries as keys (CLIP's text encoder): query
/// `i` attends to keys `0..=i`. `None` also when the query and key counts differ.
///
/// # Shapes
/// - q, k: `[batch, heads, tokens, head_dim]`, v: `[batch, heads, tokens, value_dim]`
/// - output: `[batch, heads, tokens, value_dim]`
pub fn attention_causal(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<4>> {
    if q.dims()[2] != k.dims()[2] {
        return None;
    }
    launch(q, k, v, true, None)
}

fn launch(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, causal: bool, r: Option<usize>) -> Option<Tensor<4>> {
    let [batch, heads, queries, head_dim] = q.dims();
    let [_, _, keys, value_dim] = v.dims();
    let shape = Shape { batch, heads, queries, keys, head_dim, value_dim, tokens_major: false };
    let out = run(q, k, v, shape, causal, r)?;
    Some(Tensor::from_primitive::<CubeBackend>(out))
}

/// [`attention`] on the projections as they come, `[batch, tokens, heads * width]`, without swapping
/// heads and tokens before and after (four copies an attention otherwise).
///
/// # Shapes
/// - q: `[batch, queries, heads * head_dim]`
/// - k: `[batch, keys, heads * head_dim]`
/// - v: `[batch, keys, heads * value_dim]`
/// - output: `[batch, queries, heads * value_dim]`
pub fn attention_tokens(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    let [batch, queries, q_width] = q.dims();
    let [_, keys, v_width] = v.dims();
    if heads == 0 || q_width % heads != 0 || v_width % heads != 0 || k.dims() != [batch, keys, q_width] {
        return None;
    }
    let (head_dim, value_dim) = (q_width / heads, v_width / heads);
    let shape = Shape { batch, heads, queries, keys, head_dim, value_dim, tokens_major: true };
    let out = run(q, k, v, shape, false, None)?;
    Some(Tensor::from_primitive::<CubeBackend>(out))
}

struct Shape {
    batch: usize,
    heads: usize,
    queries: usize,
    keys: usize,
    head_dim: usize,
    value_dim: usize,
    tokens_major: bool,
}

fn run<const D: usize>(
    q: &Tensor<D>,
    k: &Tensor<D>,
    v: &Tensor<D>,
    shape: Shape,
    causal: bool,
    r: Option<usize>,
) -> Option<burn_cubecl::tensor::CubeTensor> {
    let Shape { batch, heads, queries, keys, head_dim, value_dim, tokens_major } = shape;
    let dtype = q.dtype();
    if keys == 0 || queries == 0 || head_dim > MAX_HEAD_DIM || value_dim > MAX_HEAD_DIM {
        return None;
    }
    let r = r.unwrap_or_else(|| queries_per_lane(head_dim, value_dim, super::choice().attention_registers)).max(1);
    let (q, k, v) = (super::cube_tensor(q, dtype)?, super::cube_tensor(k, dtype)?, super::cube_tensor(v, dtype)?);
    let client = q.client.clone();
    let out_shape = match tokens_major {
        true => vec![batch, queries, heads * value_dim],
        false => vec![batch, heads, queries, value_dim],
    };
    let output = empty_device_dtype(client.clone(), q.device.clone(), out_shape.into(), dtype);
    let blocks_per_head = queries.div_ceil(r);
    let lanes = batch * heads * blocks_per_head;
    let count = super::grid_1d(lanes, LANES);
    unsafe {
        attention_rows::launch_unchecked(
            &client,
            count,
            CubeDim::new_1d(LANES as u32),
            q.into_buffer_arg(),
            k.into_buffer_arg(),
            v.into_buffer_arg(),
            output.clone().into_buffer_arg(),
            queries,
            keys,
            heads,
            blocks_per_head,
            lanes,
            1.0 / (head_dim as f32).sqrt(),
            head_dim,
            value_dim,
            causal,
            r,
            tokens_major,
            burn::backend::cubecl::dtype_to_storage_type(dtype),
        );
    }
    Some(output)
}
