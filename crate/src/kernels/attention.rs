//! Attention with the softmax computed online, one query row per invocation, for CPU-backed adapters.
//!
//! On SwiftShader (the headless browser's WebGPU) burn's attention kernel ran the tiny U-Net's
//! `[2, 8, 256, 8]` self-attention at 0.3 GFLOP/s (114 ms a call) and matmul + softmax was slower
//! still: both move tiles through workgroup memory behind barriers, which a CPU emulates per SIMD
//! group. Here each invocation walks the keys once (running max, rescaled sum and output, all f32),
//! and the invocations of a workgroup are queries of the same head, so every key and value load is
//! the same for all lanes. No score matrix is materialised, so no query blocks are needed.

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
    rows: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] causal: bool,
    #[define(E)] _dtype: ElemType,
) {
    let row = (CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize) * LANES + UNIT_POS_X as usize;
    if row >= rows {
        terminate!();
    }
    let head = row / queries;
    let mut qr = Array::<f32>::new(head_dim);
    #[unroll]
    for i in 0..head_dim {
        qr[i] = f32::cast_from(q[row * head_dim + i]) * scale;
    }
    let mut acc = Array::<f32>::new(value_dim);
    #[unroll]
    for i in 0..value_dim {
        acc[i] = 0.0;
    }
    let mut max = f32::new(-1.0e30);
    let mut sum = 0.0f32;
    let k_base = head * keys * head_dim;
    let v_base = head * keys * value_dim;
    // Causal (queries == keys): query i sees keys 0..=i.
    let mut end = keys;
    if causal {
        end = row % queries + 1;
    }
    for j in 0..end {
        let mut s = 0.0f32;
        #[unroll]
        for i in 0..head_dim {
            s += qr[i] * f32::cast_from(k[k_base + j * head_dim + i]);
        }
        if s > max {
            let c = (max - s).exp();
            sum *= c;
            #[unroll]
            for i in 0..value_dim {
                acc[i] *= c;
            }
            max = s;
        }
        let p = (s - max).exp();
        sum += p;
        #[unroll]
        for i in 0..value_dim {
            acc[i] += p * f32::cast_from(v[v_base + j * value_dim + i]);
        }
    }
    #[unroll]
    for i in 0..value_dim {
        output[row * value_dim + i] = E::cast_from(acc[i] / sum);
    }
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
    launch(q, k, v, false)
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
    launch(q, k, v, true)
}

fn launch(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, causal: bool) -> Option<Tensor<4>> {
    let dtype = q.dtype();
    let [batch, heads, queries, head_dim] = q.dims();
    let [_, _, keys, value_dim] = v.dims();
    if keys == 0 || head_dim > MAX_HEAD_DIM || value_dim > MAX_HEAD_DIM {
        return None;
    }
    let (q, k, v) = (super::cube_tensor(q, dtype)?, super::cube_tensor(k, dtype)?, super::cube_tensor(v, dtype)?);
    let client = q.client.clone();
    let output = empty_device_dtype(client.clone(), q.device.clone(), [batch, heads, queries, value_dim].into(), dtype);
    let rows = batch * heads * queries;
    let count = super::grid_1d(rows, LANES);
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
            rows,
            1.0 / (head_dim as f32).sqrt(),
            head_dim,
            value_dim,
            causal,
            burn::backend::cubecl::dtype_to_storage_type(dtype),
        );
    }
    Some(Tensor::from_primitive::<CubeBackend>(output))
}
