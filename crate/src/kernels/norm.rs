//! GroupNorm (optionally followed by SiLU) and LayerNorm as one kernel each.
//!
//! Built from burn's tensor ops, a GroupNorm + SiLU is ~16 launches (four reductions, the
//! broadcasts, the affine, the activation), each reading and writing the whole tensor; a LayerNorm
//! is 8. They were ~half of the ~2500 launches of an SD-shaped U-Net call on lavapipe, and the
//! elementwise kernels ~45% of its kernel time (BENCHMARKS.md). Here a workgroup (GPUs) or a single
//! invocation (CPU devices; [`Layout`]) normalizes one block (a (batch, group) of a GroupNorm, a row
//! of a LayerNorm): it reads the block twice for the mean and then the variance (two passes, as
//! burn's, all in f32) and once more to write the output with the affine and the activation applied.

use burn::tensor::Tensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;

/// Invocations per block (and workgroup) on GPUs.
const LANES: usize = 64;
/// Invocations per workgroup where each normalizes a block alone ([`Layout::Lane`]).
const CPU_LANES: usize = 8;

/// The sum of every lane's `value`, for all lanes: a tree in workgroup memory.
#[cube]
fn lane_sum(partial: &mut Shared<[f32]>, value: f32) -> f32 {
    let lane = UNIT_POS_X as usize;
    partial[lane] = value;
    sync_cube();
    // The workgroup's size (LANES) read at run time: starting from the constant, the loop failed
    // cubecl's IR verification (an index where a pointer was expected).
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if lane < stride {
            let both = partial[lane] + partial[lane + stride];
            partial[lane] = both;
        }
        sync_cube();
        stride /= 2;
    }
    let total = partial[0];
    // Before the next call overwrites it.
    sync_cube();
    total
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn normalize<E: Float>(
    x: &[E],
    gamma: &[E],
    beta: &[E],
    output: &mut [E],
    blocks: usize,
    block_len: usize,
    inner: usize,
    groups: usize,
    epsilon: f32,
    #[comptime] lanes: usize,
    #[comptime] affine: bool,
    #[comptime] silu: bool,
    #[define(E)] _dtype: ElemType,
) {
    let workgroup = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let alone = comptime!(lanes == 1);
    let mut block = workgroup;
    let mut lane = UNIT_POS_X as usize;
    if alone {
        block = workgroup * CPU_LANES + lane;
        lane = 0;
    }
    if block >= blocks {
        terminate!();
    }
    let base = block * block_len;
    let mut partial = Shared::<[f32]>::new_slice(lanes);

    let steps = (block_len + lanes - 1) / lanes;
    let mut sum = 0.0f32;
    for k in 0..steps {
        let i = k * lanes + lane;
        if i < block_len {
            sum += f32::cast_from(x[base + i]);
        }
    }
    if !alone {
        sum = lane_sum(&mut partial, sum);
    }
    let mean = sum / f32::cast_from(block_len);

    let mut squares = 0.0f32;
    for k in 0..steps {
        let i = k * lanes + lane;
        if i < block_len {
            let d = f32::cast_from(x[base + i]) - mean;
            squares += d * d;
        }
    }
    if !alone {
        squares = lane_sum(&mut partial, squares);
    }
    let std = (squares / f32::cast_from(block_len) + epsilon).sqrt();

    // Element i of the block has parameter `first + i / inner`: its channel in a GroupNorm's
    // (batch, group), its feature in a LayerNorm's row (`inner` 1, one group).
    let first = (block % groups) * (block_len / inner);
    for k in 0..steps {
        let i = k * lanes + lane;
        if i < block_len {
            let mut y = (f32::cast_from(x[base + i]) - mean) / std;
            if affine {
                let p = first + i / inner;
                y = y * f32::cast_from(gamma[p]) + f32::cast_from(beta[p]);
            }
            if silu {
                y = y / (1.0 + (-y).exp());
            }
            output[base + i] = E::cast_from(y);
        }
    }
}

/// The longest block [`Layout::Lane`] takes: llvmpipe ends a shader's loops after 65535 iterations
/// *in all* (gallivm's `LP_MAX_TGSI_LOOP_ITERATIONS`, one counter per invocation for every loop),
/// silently, and a lane alone loops over its block three times. (A group of the U-Net's last up
/// block at 512 px has 122,880 values; burn's one-`mean_dim` GroupNorm came out wrong there for
/// the same reason.)
const MAX_LANE_BLOCK: usize = 65535 / 3 - 1;

/// How `normalize` spreads a block over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// A workgroup of 64 per block, the sums reduced in workgroup memory (GPUs).
    Workgroup,
    /// One invocation per block and no barrier: devices that run shaders on a CPU, where a barrier
    /// switches between the workgroup's SIMD groups ([`super::Choice::lanes`]). Blocks longer than
    /// 21,844 values (`MAX_LANE_BLOCK`) take a workgroup all the same.
    Lane,
}

impl Layout {
    /// The layout for this device.
    pub fn for_device() -> Layout {
        if super::choice().lanes { Layout::Lane } else { Layout::Workgroup }
    }
}

/// Launches [`normalize`] over `blocks` contiguous blocks of `x` (`None` where the tensors are not
/// f32/f16 cubecl tensors of one dtype, or there is nothing to normalize).
#[allow(clippy::too_many_arguments)]
fn launch<const D: usize>(
    x: &Tensor<D>,
    affine: Option<(&Tensor<1>, &Tensor<1>)>,
    blocks: usize,
    inner: usize,
    groups: usize,
    epsilon: f64,
    silu: bool,
    layout: Layout,
) -> Option<Tensor<D>> {
    let dtype = x.dtype();
    let len = x.shape().num_elements();
    if len == 0 || blocks == 0 {
        return None;
    }
    let input = super::cube_tensor(x, dtype)?;
    let (gamma, beta) = match affine {
        Some((g, b)) => (super::cube_tensor(g, dtype)?, super::cube_tensor(b, dtype)?),
        // Bindings that are never read.
        None => (input.clone(), input.clone()),
    };
    let client = input.client.clone();
    let output = empty_device_dtype(client.clone(), input.device.clone(), x.shape(), dtype);
    let layout = if len / blocks > MAX_LANE_BLOCK { Layout::Workgroup } else { layout };
    let (lanes, count, dim) = match layout {
        Layout::Lane => (1, super::grid_1d(blocks, CPU_LANES), CPU_LANES),
        Layout::Workgroup => (LANES, super::grid_1d(blocks, 1), LANES),
    };
    unsafe {
        normalize::launch_unchecked(
            &client,
            count,
            CubeDim::new_1d(dim as u32),
            input.into_buffer_arg(),
            gamma.into_buffer_arg(),
            beta.into_buffer_arg(),
            output.clone().into_buffer_arg(),
            blocks,
            len / blocks,
            inner,
            groups,
            epsilon as f32,
            lanes,
            affine.is_some(),
            silu,
            burn::backend::cubecl::dtype_to_storage_type(dtype),
        );
    }
    Some(Tensor::from_primitive::<CubeBackend>(output))
}

/// torch's `GroupNorm(groups, c, eps)` over `x`, then SiLU where `silu`; `affine` is `(weight, bias)`
/// per channel. `None` where the tensors are not f32/f16 cubecl tensors or `groups` does not divide
/// the channels (the caller then uses burn's ops).
///
/// # Shapes
/// - x: `[batch, channels, height, width]`, returned in the same shape
/// - affine: `[channels]` each
pub fn group_norm(
    x: &Tensor<4>,
    groups: usize,
    affine: Option<(&Tensor<1>, &Tensor<1>)>,
    epsilon: f64,
    silu: bool,
    layout: Layout,
) -> Option<Tensor<4>> {
    let [b, c, h, w] = x.dims();
    if groups == 0 || c % groups != 0 {
        return None;
    }
    launch(x, affine, b * groups, h * w, groups, epsilon, silu, layout)
}

/// torch's `LayerNorm(features, eps)` over the last dimension of `x`; `affine` is `(weight, bias)`.
///
/// # Shapes
/// - x: `[..., features]`, returned in the same shape
/// - affine: `[features]` each
pub fn layer_norm<const D: usize>(
    x: &Tensor<D>,
    affine: Option<(&Tensor<1>, &Tensor<1>)>,
    epsilon: f64,
    layout: Layout,
) -> Option<Tensor<D>> {
    let features = x.dims()[D - 1];
    if features == 0 {
        return None;
    }
    launch(x, affine, x.shape().num_elements() / features, 1, 1, epsilon, false, layout)
}
