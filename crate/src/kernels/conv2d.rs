//! 2-D convolution as an implicit GEMM, for the U-Net's and the VAE's convolutions on cubecl devices.
//!
//! burn 0.22's conv2d on wgpu autotunes between a direct kernel and implicit-GEMM kernels that all need
//! cooperative matrices, which WebGPU does not expose, so in the browser every 3x3 conv ran the direct
//! kernel (1-2% of an H100's f32 peak; ~37 ms a launch for the tiny model on SwiftShader). Here the
//! product is `out[c_out, pixels] = weight[c_out, c_in*kh*kw] x patches[c_in*kh*kw, pixels]`, where
//! the patch matrix is never written: each workgroup stages a `BK` slice of the weight rows and of the
//! gathered input patches in workgroup memory and accumulates a `BM x BN` tile in registers (f32
//! accumulators for f16 too), then adds the bias. Tensors stay NCHW (burn's conv permutes to NHWC and
//! back around every call). Within WebGPU's default limits: 256 invocations, 8 KiB of workgroup memory.

use burn::tensor::Tensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::MAX_GROUPS;

/// Output channels per workgroup tile.
const BM: usize = 64;
/// Output pixels per workgroup tile.
const BN: usize = 64;
/// Reduction depth (input channel x tap) staged per step.
const BK: usize = 16;
/// Invocations per workgroup side: 16 x 16, each accumulating a 4 x 4 block.
const SIDE: usize = 16;
/// Rows and columns of each invocation's block.
const TM: usize = BM / SIDE;
const TN: usize = BN / SIDE;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv2d_igemm<E: Float>(
    input: &[E],
    weight: &[E],
    bias: &[E],
    output: &mut [E],
    c_in: usize,
    in_h: usize,
    in_w: usize,
    c_out: usize,
    out_h: usize,
    out_w: usize,
    pad_top: usize,
    pad_left: usize,
    #[comptime] kh: usize,
    #[comptime] kw: usize,
    #[comptime] stride: usize,
    #[comptime] has_bias: bool,
    #[define(E)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let t = ty * SIDE + tx;
    let hw_out = out_h * out_w;
    let pixels = hw_out * (input.len() / (c_in * in_h * in_w));
    let depth = c_in * kh * kw;
    let taps = kh * kw;
    let tile_p = (CUBE_POS_X as usize + CUBE_POS_Z as usize * CUBE_COUNT_X as usize) * BN;
    let tile_m = CUBE_POS_Y as usize * BM;

    // [k][m] and [k][n]: the inner loop reads a row of each.
    let mut a_s = Shared::<[E]>::new_slice(BK * BM);
    let mut b_s = Shared::<[E]>::new_slice(BK * BN);
    let mut acc = Array::<f32>::new(TM * TN);
    #[unroll]
    for i in 0..TM * TN {
        acc[i] = 0.0;
    }

    // The patch column this invocation gathers is fixed: pixel `t % BN` of the tile, rows
    // `t / BN + 4 i` of each slice (BN x BK / 256 = 4 values).
    let load_n = t % BN;
    let p = tile_p + load_n;
    let p_ok = p < pixels;
    let pb = p / hw_out;
    let prem = p % hw_out;
    let y0 = (prem / out_w) * stride;
    let x0 = (prem % out_w) * stride;
    let in_base = pb * c_in * in_h * in_w;
    let load_kb = t / BN;
    // The weight values it loads: depth `t % BK` of the slice, channels `t / BK + 16 i`.
    let a_k = t % BK;
    let a_m = t / BK;

    let k_tiles = (depth + BK - 1) / BK;
    for kt in 0..k_tiles {
        let k0 = kt * BK;
        #[unroll]
        for i in 0..BM * BK / (SIDE * SIDE) {
            let m = tile_m + a_m + i * (SIDE * SIDE / BK);
            let k = k0 + a_k;
            let mut v = E::from_int(0);
            if m < c_out && k < depth {
                v = weight[m * depth + k];
            }
            a_s[a_k * BM + a_m + i * (SIDE * SIDE / BK)] = v;
        }
        #[unroll]
        for i in 0..BN * BK / (SIDE * SIDE) {
            let kl = load_kb + i * (SIDE * SIDE / BN);
            let k = k0 + kl;
            let ci = k / taps;
            let r = k % taps;
            let iy = y0 + r / kw;
            let ix = x0 + r % kw;
            let mut v = E::from_int(0);
            if p_ok && k < depth && iy >= pad_top && ix >= pad_left {
                let y = iy - pad_top;
                let x = ix - pad_left;
                if y < in_h && x < in_w {
                    v = input[in_base + (ci * in_h + y) * in_w + x];
                }
            }
            b_s[kl * BN + load_n] = v;
        }
        sync_cube();

        #[unroll]
        for kk in 0..BK {
            let mut a = Array::<f32>::new(TM);
            let mut b = Array::<f32>::new(TN);
            #[unroll]
            for i in 0..TM {
                a[i] = f32::cast_from(a_s[kk * BM + ty + i * SIDE]);
            }
            #[unroll]
            for j in 0..TN {
                b[j] = f32::cast_from(b_s[kk * BN + tx + j * SIDE]);
            }
            #[unroll]
            for i in 0..TM {
                #[unroll]
                for j in 0..TN {
                    acc[i * TN + j] += a[i] * b[j];
                }
            }
        }
        sync_cube();
    }

    #[unroll]
    for j in 0..TN {
        let p = tile_p + tx + j * SIDE;
        if p < pixels {
            let pb = p / hw_out;
            let prem = p % hw_out;
            #[unroll]
            for i in 0..TM {
                let m = tile_m + ty + i * SIDE;
                if m < c_out {
                    let mut v = acc[i * TN + j];
                    if has_bias {
                        v += f32::cast_from(bias[m]);
                    }
                    output[(pb * c_out + m) * hw_out + prem] = E::cast_from(v);
                }
            }
        }
    }
}

/// Output pixels (batch x height x width) below which burn's direct kernel beats ours on SwiftShader
/// (a 64-pixel tile then runs mostly empty): at 32 pixels ours took 1.7x burn's time, at 128 0.83x.
pub const MIN_PIXELS: usize = 128;

/// The output size along one axis: `None` when the padded input is smaller than the kernel.
pub fn output_size(input: usize, kernel: usize, stride: usize, before: usize, after: usize) -> Option<usize> {
    Some((input + before + after).checked_sub(kernel)? / stride + 1)
}

/// `conv2d(x, weight, bias)` with groups 1 and dilation 1, as burn's with the same stride and padding,
/// or `None` when `x` is not on a cubecl device, is not f32/f16, or the padded input is smaller than
/// the kernel (the caller then uses burn's op).
///
/// `padding` is (top, left, bottom, right), burn's `PaddingConfig2d::Explicit` order.
///
/// # Shapes
/// - x: `[batch, c_in, h, w]`
/// - weight: `[c_out, c_in, kh, kw]`
/// - bias: `[c_out]`
/// - output: `[batch, c_out, (h + top + bottom - kh) / stride + 1, (w + left + right - kw) / stride + 1]`
pub fn conv2d(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: usize,
    padding: [usize; 4],
) -> Option<Tensor<4>> {
    let [_, _, h, w] = x.dims();
    let [_, _, kh, kw] = weight.dims();
    let [top, left, bottom, right] = padding;
    let out = [output_size(h, kh, stride, top, bottom)?, output_size(w, kw, stride, left, right)?];
    let dtype = x.dtype();
    let input = super::cube_tensor(x, dtype)?;
    let weight = super::cube_tensor(weight, dtype)?;
    let bias = super::cube_bias(bias, dtype)?;
    Some(Tensor::from_primitive::<CubeBackend>(launch(input, weight, bias, stride, [top, left], out)))
}

fn launch(
    input: CubeTensor,
    weight: CubeTensor,
    bias: Option<CubeTensor>,
    stride: usize,
    [top, left]: [usize; 2],
    [out_h, out_w]: [usize; 2],
) -> CubeTensor {
    let dims = |t: &CubeTensor| t.meta.shape().to_vec();
    let (&[batch, c_in, in_h, in_w], &[c_out, _, kh, kw]) = (&dims(&input)[..], &dims(&weight)[..]) else {
        unreachable!("rank-4 tensors")
    };
    let client = input.client.clone();
    let dtype = input.dtype;
    let output = empty_device_dtype(client.clone(), input.device.clone(), [batch, c_out, out_h, out_w].into(), dtype);

    let has_bias = bias.is_some();
    let bias = bias.unwrap_or_else(|| weight.clone());
    let pixel_tiles = (batch * out_h * out_w).div_ceil(BN);
    let groups_x = pixel_tiles.min(MAX_GROUPS);
    let groups_z = pixel_tiles.div_ceil(groups_x);
    let count = CubeCount::Static(groups_x as u32, c_out.div_ceil(BM) as u32, groups_z as u32);
    unsafe {
        conv2d_igemm::launch_unchecked(
            &client,
            count,
            CubeDim::new_2d(SIDE as u32, SIDE as u32),
            input.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            output.clone().into_buffer_arg(),
            c_in,
            in_h,
            in_w,
            c_out,
            out_h,
            out_w,
            top,
            left,
            kh,
            kw,
            stride,
            has_bias,
            burn::backend::cubecl::dtype_to_storage_type(dtype),
        );
    }
    output
}
