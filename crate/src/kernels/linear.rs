//! A linear layer (`x W + b`, burn's `[d_in, d_out]` weight) for CPU-emulated GPUs.
//!
//! On SwiftShader burn's default matmul ran the tiny U-Net's projections (`[512, 64] x [64, 64]`) at
//! ~0.4 GFLOP/s, behind workgroup-memory tiles and barriers. Here each invocation owns one output
//! column for `ROWS` rows: consecutive lanes read consecutive weights of a row of `W`, and every lane
//! of the workgroup reads the same input values (uniform loads); f32 accumulation, bias fused.

use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::conv2d::{Add, Tail, bias_of, plus_residual, residual_count};

/// Output columns per workgroup, one per invocation.
const LANES: usize = 64;
/// Rows each invocation accumulates.
const ROWS: usize = 8;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn linear_rows<E: Float>(
    x: &[E],
    weight: &[E],
    bias: &[E],
    residual: &[E],
    output: &mut [E],
    rows: usize,
    d_in: usize,
    d_out: usize,
    epilogue: u32,
    #[define(E)] _dtype: ElemType,
) {
    let col = CUBE_POS_X as usize * LANES + UNIT_POS_X as usize;
    let row0 = (CUBE_POS_Y as usize + CUBE_POS_Z as usize * CUBE_COUNT_Y as usize) * ROWS;
    // Columns past d_out read the last column and write nothing.
    let mut c = col;
    if c >= d_out {
        c = d_out - 1;
    }
    let mut start = Array::<usize>::new(ROWS);
    #[unroll]
    for r in 0..ROWS {
        let mut row = row0 + r;
        if row >= rows {
            row = rows - 1;
        }
        start[r] = row * d_in;
    }
    let mut acc = Array::<f32>::new(ROWS);
    #[unroll]
    for r in 0..ROWS {
        acc[r] = 0.0;
    }
    for i in 0..d_in {
        let w = f32::cast_from(weight[i * d_out + c]);
        #[unroll]
        for r in 0..ROWS {
            acc[r] += f32::cast_from(x[start[r] + i]) * w;
        }
    }
    if col < d_out {
        let b = bias_of(bias, 0, col, d_out, epilogue);
        #[unroll]
        for r in 0..ROWS {
            if row0 + r < rows {
                let at = (row0 + r) * d_out + col;
                output[at] = E::cast_from(plus_residual(acc[r] + b, residual, at, epilogue));
            }
        }
    }
}

/// `x W + b (+ residual)` as burn's `Linear` (then an add), or `None` when the tensors are not
/// f32/f16 cubecl tensors, a side is empty or the residual's shape is not the output's (the caller
/// then uses burn's ops).
///
/// # Shapes
/// - x: `[rows, d_in]`
/// - weight: `[d_in, d_out]`
/// - bias: `[d_out]`
/// - residual, output: `[rows, d_out]`
pub fn linear(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
) -> Option<Tensor<2>> {
    let (input, weight, tail, output, [rows, d_in, d_out]) = operands(x, weight, bias, residual)?;
    let (client, dtype) = (input.client.clone(), input.dtype);
    let (bias, residual, epilogue) = tail.bindings(&weight);
    let row_groups = rows.div_ceil(ROWS);
    let groups_y = row_groups.min(super::MAX_GROUPS);
    let count = CubeCount::Static(d_out.div_ceil(LANES) as u32, groups_y as u32, row_groups.div_ceil(groups_y) as u32);
    unsafe {
        linear_rows::launch_unchecked(
            &client,
            count,
            CubeDim::new_1d(LANES as u32),
            input.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            residual.into_buffer_arg(),
            output.clone().into_buffer_arg(),
            rows,
            d_in,
            d_out,
            epilogue,
            burn::backend::cubecl::dtype_to_storage_type(dtype),
        );
    }
    Some(Tensor::from_primitive::<CubeBackend>(output))
}

/// A linear layer's operands as contiguous cubecl tensors, its epilogue's, its empty `[rows, d_out]`
/// output and `[rows, d_in, d_out]`; `None` where [`linear`] declines.
#[allow(clippy::type_complexity)]
fn operands(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
) -> Option<(CubeTensor, CubeTensor, Tail, CubeTensor, [usize; 3])> {
    let dtype = x.dtype();
    let [rows, d_in] = x.dims();
    let d_out = weight.dims()[1];
    if rows == 0 || d_in == 0 || d_out == 0 {
        return None;
    }
    let tail = tail(bias, residual, dtype, rows, d_out)?;
    let input = super::cube_tensor(x, dtype)?;
    let weight = super::cube_tensor(weight, dtype)?;
    let output = empty_device_dtype(input.client.clone(), input.device.clone(), [rows, d_out].into(), dtype);
    Some((input, weight, tail, output, [rows, d_in, d_out]))
}

/// A linear layer's epilogue operands, as the convolution's for `[rows, d_out, 1, 1]` (a linear layer
/// is a 1x1 convolution of 1x1 images, one per row).
fn tail(
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
    dtype: DType,
    rows: usize,
    d_out: usize,
) -> Option<Tail> {
    let residual = residual.map(|r| r.clone().reshape([rows, d_out, 1, 1]));
    Tail::new(bias, Add { per_batch: None, residual: residual.as_ref() }, dtype, [rows, d_out, 1, 1])
}

/// [`linear`] as a tiled GEMM: our convolution kernel with 1x1 images, one per row
/// ([`super::conv2d::Tiling`], `None` for the tiling picks the device's).
///
/// # Shapes
/// - x: `[rows, d_in]`, weight: `[d_in, d_out]`, bias: `[d_out]`
/// - output: `[rows, d_out]`
pub fn linear_tiled(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
    tiling: Option<super::conv2d::Tiling>,
) -> Option<Tensor<2>> {
    let dtype = x.dtype();
    let [rows, d_in] = x.dims();
    let d_out = weight.dims()[1];
    if rows == 0 || d_in == 0 || d_out == 0 {
        return None;
    }
    let tiling = tiling.unwrap_or_else(|| super::conv_tiling(d_out, rows, d_in));
    let input = super::cube_tensor(&x.clone().reshape([rows, d_in, 1, 1]), dtype)?;
    let weight = super::cube_tensor(&weight.clone().reshape([d_in, d_out, 1, 1]), dtype)?;
    let tail = tail(bias, residual, dtype, rows, d_out)?;
    let out = super::conv2d::launch(input, weight, tail, 1, [0, 0], [1, 1], tiling, true);
    Some(Tensor::<4>::from_primitive::<CubeBackend>(out).reshape([rows, d_out]))
}

/// Lanes per workgroup of [`linear_lanes`]: one 256-bit vector of f32.
const BLOCK_LANES: usize = 8;

/// [`linear`] for devices that run shaders on a CPU (see [`super::conv2d::conv2d_lanes`]): each lane
/// keeps `r` rows x `c` columns in registers, so each loaded input and weight serves `c` or `r`
/// multiply-adds instead of ~1 in the row kernel.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn linear_lanes<E: Float>(
    x: &[E],
    weight: &[E],
    bias: &[E],
    residual: &[E],
    output: &mut [E],
    rows: usize,
    d_in: usize,
    d_out: usize,
    #[comptime] r: usize,
    #[comptime] c: usize,
    epilogue: u32,
    #[define(E)] _dtype: ElemType,
) {
    let lane = (CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize) * BLOCK_LANES + UNIT_POS_X as usize;
    let col_blocks = (d_out + c - 1) / c;
    let row0 = (lane / col_blocks) * r;
    let col0 = (lane % col_blocks) * c;
    // Rows and columns past the ends read the last one and write nothing.
    let mut start = Array::<usize>::new(r);
    #[unroll]
    for i in 0..r {
        let mut row = row0 + i;
        if row >= rows {
            row = rows - 1;
        }
        start[i] = row * d_in;
    }
    let mut cols = Array::<usize>::new(c);
    #[unroll]
    for j in 0..c {
        let mut col = col0 + j;
        if col >= d_out {
            col = d_out - 1;
        }
        cols[j] = col;
    }
    let mut acc = Array::<f32>::new(r * c);
    #[unroll]
    for i in 0..r * c {
        acc[i] = 0.0;
    }
    let mut xs = Array::<f32>::new(r);
    for k in 0..d_in {
        #[unroll]
        for i in 0..r {
            xs[i] = f32::cast_from(x[start[i] + k]);
        }
        let wrow = k * d_out;
        #[unroll]
        for j in 0..c {
            let w = f32::cast_from(weight[wrow + cols[j]]);
            #[unroll]
            for i in 0..r {
                acc[i * c + j] += xs[i] * w;
            }
        }
    }
    if row0 < rows {
        #[unroll]
        for j in 0..c {
            let col = col0 + j;
            if col < d_out {
                let b = bias_of(bias, 0, col, d_out, epilogue);
                #[unroll]
                for i in 0..r {
                    if row0 + i < rows {
                        output[(row0 + i) * d_out + col] = E::cast_from(acc[i * c + j] + b);
                    }
                }
            }
        }
        // The residual in a loop that is not unrolled, as `conv2d_lanes`'s.
        let count = residual_count(epilogue, r * c);
        for e in 0..count {
            let row = row0 + e / c;
            let col = col0 + e % c;
            if row < rows && col < d_out {
                let at = row * d_out + col;
                output[at] = E::cast_from(f32::cast_from(output[at]) + f32::cast_from(residual[at]));
            }
        }
    }
}

/// The rows x columns block per lane of `linear_lanes` for `rows` rows within `accumulators`: as
/// many rows as still give every lane of a workgroup a block (at most 8), the columns from the rest
/// (at most 32, never more than `d_out` needs).
pub fn lane_block(rows: usize, d_out: usize, accumulators: usize) -> (usize, usize) {
    let r = [8, 4, 2, 1].into_iter().find(|&r| rows.div_ceil(r) >= BLOCK_LANES).unwrap_or(1);
    let c = (accumulators / r).clamp(1, 32).min(d_out.next_power_of_two());
    (r, c)
}

/// [`linear`] by `linear_lanes` with `r` x `c` blocks ([`lane_block`] for the device's).
///
/// # Shapes
/// - x: `[rows, d_in]`, weight: `[d_in, d_out]`, bias: `[d_out]`
/// - output: `[rows, d_out]`
pub fn linear_blocked(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
    (r, c): (usize, usize),
) -> Option<Tensor<2>> {
    let (input, weight, tail, output, [rows, d_in, d_out]) = operands(x, weight, bias, residual)?;
    let (client, dtype) = (input.client.clone(), input.dtype);
    let (bias, residual, epilogue) = tail.bindings(&weight);
    let count = super::grid_1d(rows.div_ceil(r) * d_out.div_ceil(c), BLOCK_LANES);
    unsafe {
        linear_lanes::launch_unchecked(
            &client,
            count,
            CubeDim::new_1d(BLOCK_LANES as u32),
            input.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            residual.into_buffer_arg(),
            output.clone().into_buffer_arg(),
            rows,
            d_in,
            d_out,
            r,
            c,
            epilogue,
            burn::backend::cubecl::dtype_to_storage_type(dtype),
        );
    }
    Some(Tensor::from_primitive::<CubeBackend>(output))
}
