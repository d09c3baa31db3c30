//! The networks of a Stable Diffusion pipeline, in burn, built from the model's own config files. File
//! and type names follow diffusers (`unet_2d_condition`, `resnet`, `transformer_2d`, `autoencoder_kl`).

pub mod attention;
pub mod autoencoder_kl;
pub mod clip;
pub mod embeddings;
pub mod flex_attention;
pub mod normalization;
pub mod resnet;
pub mod transformer_2d;
pub mod tuning;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;

use burn::nn::Linear;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Tensor};

pub use crate::kernels::conv2d::Add;

pub(crate) use normalization::GroupStats;
pub use normalization::{LayerNorm, group_norm, group_norm_silu};

/// A linear layer on `[batch, tokens, features]` as one 2-D matmul: burn's batched matmul with a
/// broadcast weight is about 1.6x slower on the CPU than the same product flattened. The kernel
/// measured for the shape on this device ([`crate::kernels::tune`]), else where
/// [`crate::kernels::choice`] says so our kernels ([`crate::kernels::linear`]): on CPU devices the
/// lane kernel; elsewhere the tiled GEMM for at least the convolution's minimum rows and output
/// features, else the row kernel.
pub(crate) fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    linear_residual(layer, x, None)
}

/// [`linear`] plus `residual`, added in the same kernel where ours runs
/// ([`crate::kernels::conv2d::Epilogue`]).
///
/// # Shapes
/// - x: `[batch, tokens, d_in]`
/// - residual, output: `[batch, tokens, d_out]`
pub(crate) fn linear_residual(layer: &Linear, x: Tensor<3>, residual: Option<Tensor<3>>) -> Tensor<3> {
    use crate::kernels::{linear, tune};
    let [b, n, d] = x.dims();
    let x = x.reshape([b * n, d]);
    let choice = crate::kernels::choice();
    let (weight, bias) = (layer.weight.val(), layer.bias.as_ref().map(|b| b.val()));
    let (rows, d_out) = (b * n, weight.dims()[1]);
    let residual = residual.map(|r| r.reshape([rows, d_out]));
    let (bias, residual) = (bias.as_ref(), residual.as_ref());
    let measured = || {
        let shape = tune::LinearShape { rows, d_in: d, d_out, f16: x.dtype() == DType::F16 };
        tune::run_linear(tune::linear_pick(shape)?, &x, &weight, bias, residual)
    };
    let ours = || {
        if choice.lanes {
            // CPU devices: the lane kernel, or burn's below its rows.
            if rows < choice.lane_min_rows {
                return None;
            }
            let block = linear::lane_block(rows, d_out, choice.lane_accumulators);
            return linear::linear_blocked(&x, &weight, bias, residual, block);
        }
        // The tiled kernel where it measured faster (as the convolution's thresholds: GEGLU's
        // projections 1.6-1.9x the row kernel's speed on SwiftShader, square ones at 32 rows 0.7x).
        match choice.conv && rows >= choice.conv_min_pixels && d_out >= choice.conv_min_channels {
            true => linear::linear_tiled(&x, &weight, bias, residual, None),
            false => linear::linear(&x, &weight, bias, residual),
        }
    };
    let y = crate::kernels::is_cube(&x)
        .then(measured)
        .flatten()
        .or_else(|| choice.linear.then(ours).flatten())
        .unwrap_or_else(|| tune::burn_linear(&x, &weight, bias, residual));
    y.reshape([b, n, d_out])
}

/// [`linear`] on `[batch, features]` (the time embeddings, their projections in every ResNet block): on
/// devices where our kernels run, one shape-generic kernel instead of a burn matmul compiled for each
/// shape (SwiftShader compiles each of those for 0.1-1 s in a cold first step).
pub(crate) fn linear_2d(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    linear(layer, x.unsqueeze_dim(0)).squeeze_dim(0)
}

/// A convolution with the layer's own stride and padding; see [`conv2d_with`].
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv2d_add(conv, x, Add::NONE)
}

/// [`conv2d`] plus `add` (a per-(batch, channel) term, a residual), in the same kernel where ours
/// runs ([`crate::kernels::conv2d::Epilogue`]), else as adds after burn's convolution.
pub fn conv2d_add(conv: &Conv2d, x: Tensor<4>, add: Add) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Same => return add_after(conv.forward(x), add),
    };
    if conv.stride[0] != conv.stride[1] || conv.dilation != [1, 1] || conv.groups != 1 {
        return add_after(conv.forward(x), add);
    }
    let bias = conv.bias.as_ref().map(|b| b.val());
    conv2d_with(x, &conv.weight.val(), bias.as_ref(), conv.stride[0], padding, add)
}

/// `out + add` as separate ops: the per-batch term first, then the residual (diffusers' order).
fn add_after(out: Tensor<4>, add: Add) -> Tensor<4> {
    let mut out = out;
    if let Some(t) = add.per_batch {
        let [b, c] = t.dims();
        out = out + t.clone().reshape([b, c, 1, 1]);
    }
    match add.residual {
        Some(r) => out + r.clone(),
        None => out,
    }
}

/// A convolution with groups 1 and dilation 1; `padding` is (top, left, bottom, right).
///
/// Where [`crate::kernels::choice`] says so, our kernels ([`crate::kernels::conv2d`]): the lane kernel
/// for every convolution (SwiftShader, lavapipe), or the implicit GEMM for every 1x1 convolution and
/// for outputs of at least its `conv_min_pixels` and `conv_min_channels`, and burn's direct kernel for
/// the others ([`crate::kernels::conv2d::burn_direct`]; burn's default ran some of these as matmuls
/// compiled per shape, most of a cold first step's time on SwiftShader).
/// Elsewhere burn's, except a 3x3 stride-1 convolution at the U-Net's lowest resolutions (at most 64
/// positions, up to 1280 channels): there im2col and one matmul with the weight viewed as
/// `[c_out, c_in * 9]` is 3-7x faster than burn-flex's direct kernel, and the column buffer is small
/// (9 x the input).
///
/// # Shapes
/// - x: `[batch, c_in, h, w]`, weight: `[c_out, c_in, kh, kw]`, bias: `[c_out]`
/// - output: `[batch, c_out, h_out, w_out]`
pub fn conv2d_with(
    x: Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: usize,
    padding: [usize; 4],
    add: Add,
) -> Tensor<4> {
    // A kernel measured on this device for the shape ([`crate::kernels::tune`]).
    if crate::kernels::is_cube(&x) {
        use crate::kernels::tune::{self, ConvPick, ConvShape};
        match tune::conv_pick(ConvShape::of(&x, weight, stride, padding)) {
            Some(ConvPick::Burn) => return add_after(tune::burn_conv(&x, weight, bias, stride, padding), add),
            Some(pick) => {
                if let Some(out) = tune::run_conv(pick, &x, weight, bias, stride, padding, add) {
                    return out;
                }
            }
            None => {}
        }
    }
    let [b, c, h, w] = x.dims();
    let [c_out, c_in, kh, kw] = weight.dims();
    let [top, left, bottom, right] = padding;
    let size = |input, kernel, before, after| crate::kernels::conv2d::output_size(input, kernel, stride, before, after);
    let choice = crate::kernels::choice();
    // 1x1: ours at every size (the VAE's decode ran 0.53-0.57 s warm with it, 0.68-0.72 s with burn's
    // direct kernel; BENCHMARKS.md).
    let pointwise = (kh, kw) == (1, 1) && stride == 1 && padding == [0; 4];
    let pixels = b * size(h, kh, top, bottom).unwrap_or(0) * size(w, kw, left, right).unwrap_or(0);
    if choice.conv
        && (choice.lanes || pointwise || (c_out >= choice.conv_min_channels && pixels >= choice.conv_min_pixels))
        && let Some(out) = crate::kernels::conv2d::conv2d(&x, weight, bias, stride, padding, add)
    {
        return out;
    }
    let options = ConvOptions::new_with_padding([stride; 2], [(top, bottom), (left, right)], [1, 1], 1);
    // Where our kernels run, the rest is burn's direct kernel by name (not a matmul compiled per shape;
    // see `burn_direct`). The im2col path below is for the CPU.
    if choice.conv
        && let Some(out) = crate::kernels::conv2d::burn_direct(&x, weight, bias, options.clone())
    {
        return add_after(out, add);
    }
    if h * w > 64 || (kh, kw) != (3, 3) || stride != 1 || padding != [1; 4] || c_in != c {
        return add_after(crate::kernels::tune::burn_conv(&x, weight, bias, stride, padding), add);
    }
    let padded = x.pad((1, 1, 1, 1), 0.0);
    let mut taps = Vec::with_capacity(9);
    for ky in 0..3 {
        for kx in 0..3 {
            taps.push(padded.clone().narrow(2, ky, h).narrow(3, kx, w).unsqueeze_dim::<5>(2));
        }
    }
    // [b, c, 9, h, w] -> [c * 9, b * h * w], rows ordered (c_in, ky, kx) like the weight's columns.
    let cols = Tensor::cat(taps, 2).reshape([b, c * 9, h * w]).swap_dims(0, 1).reshape([c * 9, b * h * w]);
    let mut out = weight.clone().reshape([c_out, c * 9]).matmul(cols);
    if let Some(bias) = bias {
        out = out + bias.clone().reshape([c_out, 1]);
    }
    add_after(out.reshape([c_out, b, h, w]).swap_dims(0, 1), add)
}

/// `module` with every float parameter in f32: SDXL's VAE on an f16 device (`force_upcast`, as diffusers'
/// `upcast_vae`); exact, since f16 values are f32 values.
pub fn into_f32<M: burn::module::Module>(module: M) -> M {
    struct ToF32;
    impl burn::module::ModuleMapper for ToF32 {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            param.map(|t| if t.dtype() == DType::F32 { t } else { t.cast(FloatDType::F32) })
        }
    }
    module.map(&mut ToF32)
}
