//! Our kernels (`websd::kernels`) on native wgpu (lavapipe here) against burn's ops on Flex: the
//! convolution on shapes that hit every edge of its tiles (channels and pixels not multiples of 64, 1x1,
//! stride 2, asymmetric padding as the VAE's downsampler, odd sizes, batch 1 to 4), the attention on
//! the head widths of the tiny model, SD 1.5 and SDXL, with key counts of 1, 77 and a few hundred (and
//! causal, as CLIP's, and on the projections' own `[batch, tokens, heads * width]` layout), burn's
//! direct convolution asked for by name on the same shapes, the epilogues (a per-(batch, channel)
//! term, a residual) of the convolution and the linear layer, GEGLU.

use burn::tensor::module::{attention, conv2d};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use websd::kernels::conv2d::{Add, Block, Tiling};
use websd::kernels::norm::Layout;

/// (batch, c_in, c_out, h, w, kernel, stride, padding (top, left, bottom, right))
const SHAPES: [(usize, usize, usize, usize, usize, usize, usize, [usize; 4]); 10] = [
    (2, 4, 32, 32, 32, 3, 1, [1; 4]),
    (2, 32, 32, 16, 16, 3, 1, [1; 4]),
    (1, 3, 5, 7, 9, 3, 1, [1; 4]),
    (4, 17, 70, 5, 6, 3, 1, [1; 4]),
    (2, 64, 96, 9, 9, 1, 1, [0; 4]),
    (1, 33, 33, 11, 13, 3, 2, [1; 4]),
    (2, 8, 8, 10, 10, 3, 2, [0, 0, 1, 1]),
    (1, 130, 65, 4, 4, 3, 1, [1; 4]),
    (3, 16, 4, 1, 1, 3, 1, [1; 4]),
    (1, 320, 320, 8, 8, 3, 1, [1; 4]),
];

/// Tilings tried beside the default, one per shape in turn: every tile shape, split-K with more
/// splits than slices, uneven splits; the scalar kernel and the vectorized one (`vectors`), with and
/// without the next slice read ahead (`prefetch`).
const TILINGS: [(usize, usize, usize, bool, bool); 8] = [
    (128, 128, 1, false, false),
    (16, 128, 3, false, false),
    (64, 128, 3, true, true),
    (32, 128, 1, false, false),
    (128, 64, 2, true, false),
    (64, 64, 7, false, false),
    (128, 128, 64, true, true),
    (64, 64, 1, true, true),
];

/// [`TILINGS`]`[i % len]`.
fn tiling(i: usize) -> Tiling {
    let (bm, bn, splits, vectors, prefetch) = TILINGS[i % TILINGS.len()];
    Tiling { bm, bn, splits, vectors, prefetch }
}

/// The default tile in the vectorized kernel.
const SMALL_VEC4: Tiling = Tiling { vectors: true, ..Tiling::SMALL };

/// Random input, weight and bias on Flex for [`SHAPES`]`[i]`, and its options.
fn conv_case(i: usize, cpu: &Device) -> (Tensor<4>, Tensor<4>, Tensor<1>, ConvOptions<2>) {
    let (b, c_in, c_out, h, w, k, stride, [top, left, bottom, right]) = SHAPES[i];
    let x = Tensor::<4>::random([b, c_in, h, w], Distribution::Normal(0.0, 1.0), cpu);
    let weight = Tensor::<4>::random([c_out, c_in, k, k], Distribution::Normal(0.0, 0.2), cpu);
    let bias = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), cpu);
    let options = ConvOptions::new_with_padding([stride; 2], [(top, bottom), (left, right)], [1, 1], 1);
    (x, weight, bias, options)
}

/// Checks `ours` (on any device) against `expected` (on Flex) within `relative` x max(1, max|expected|),
/// logging the difference; `what` names the case.
fn assert_close<const D: usize>(ours: Tensor<D>, expected: &Tensor<D>, relative: f32, what: &str) {
    assert_eq!(ours.dims(), expected.dims(), "{what}");
    let ours = Tensor::<D>::from_data(ours.to_data(), &Device::flex());
    let diff = (ours - expected.clone()).abs().max().into_scalar::<f32>();
    let scale = expected.clone().abs().max().into_scalar::<f32>();
    eprintln!("{what}: max abs diff {diff:e} (max |out| {scale})");
    assert!(diff <= relative * scale.max(1.0), "{what}: {diff}");
}

/// Runs `ours` on GPU copies of a convolution's input, weight and bias and checks it against burn's
/// conv2d on Flex (within 1e-4 x max|out|); `what` names the case in the log.
fn assert_conv_matches(
    (x, weight, bias, options): (&Tensor<4>, &Tensor<4>, Option<&Tensor<1>>, &ConvOptions<2>),
    gpu: &Device,
    what: &str,
    ours: impl Fn(&Tensor<4>, &Tensor<4>, Option<&Tensor<1>>) -> Option<Tensor<4>>,
) {
    let expected = conv2d(x.clone(), weight.clone(), bias.cloned(), options.clone());
    let on_gpu = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), gpu);
    let bias_gpu = bias.map(|t| Tensor::<1>::from_data(t.to_data(), gpu));
    let ours = ours(&on_gpu(x), &on_gpu(weight), bias_gpu.as_ref()).expect("a cubecl tensor");
    assert_close(ours, &expected, 1e-4, what);
}

#[test]
fn conv_kernel_matches_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    for (i, &(_, _, _, _, _, _, stride, padding)) in SHAPES.iter().enumerate() {
        let (x, weight, bias, options) = conv_case(i, &cpu);
        let runs = [(true, Tiling::SMALL), (false, Tiling::SMALL), (i % 2 == 1, SMALL_VEC4), (i % 2 == 0, tiling(i))];
        for (with_bias, tiling) in runs {
            let bias = with_bias.then_some(&bias);
            let what = format!("shape {i} {:?} bias {with_bias} {tiling:?}", SHAPES[i]);
            assert_conv_matches((&x, &weight, bias, &options), &gpu, &what, |x, w, b| {
                websd::kernels::conv2d::conv2d_tiled(x, w, b, stride, padding, tiling, Add::NONE)
            });
        }
    }
    // On Flex the kernel declines (the caller uses burn's op).
    let x = Tensor::<4>::zeros([1, 1, 3, 3], &cpu);
    assert!(
        websd::kernels::conv2d::conv2d(&x, &Tensor::zeros([1, 1, 3, 3], &cpu), None, 1, [1; 4], Add::NONE).is_none()
    );
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// (batch, heads, queries, keys, head_dim)
const ATTENTION_SHAPES: [(usize, usize, usize, usize, usize); 6] = [
    (2, 8, 256, 256, 8),
    (2, 8, 100, 77, 40),
    (1, 3, 5, 1, 4),
    (2, 10, 64, 77, 64),
    (1, 8, 16, 16, 160),
    (4, 2, 33, 300, 3),
];

#[test]
fn attention_kernel_matches_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    for (i, &(b, h, n, m, d)) in ATTENTION_SHAPES.iter().enumerate() {
        let q = Tensor::<4>::random([b, h, n, d], Distribution::Normal(0.0, 1.0), &cpu);
        let k = Tensor::<4>::random([b, h, m, d], Distribution::Normal(0.0, 1.0), &cpu);
        let v = Tensor::<4>::random([b, h, m, d], Distribution::Normal(0.0, 1.0), &cpu);
        let expected = attention(q.clone(), k.clone(), v.clone(), None, None, AttentionModuleOptions::default());
        let on_gpu = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &gpu);
        let ours =
            websd::kernels::attention::attention(&on_gpu(&q), &on_gpu(&k), &on_gpu(&v)).expect("a cubecl tensor");
        assert_eq!(ours.dims(), expected.dims(), "shape {i}");
        let diff = (Tensor::<4>::from_data(ours.to_data(), &cpu) - expected.clone()).abs().max().into_scalar::<f32>();
        eprintln!("attention shape {i} {:?}: max abs diff {diff:e}", ATTENTION_SHAPES[i]);
        assert!(diff <= 1e-5, "attention shape {i}: {diff}");
        // Several queries per lane, also where they do not divide a head's (within 256 registers:
        // llvmpipe compiles larger unrolled blocks for tens of seconds).
        for r in [2, 3, 8].into_iter().filter(|r| r * 2 * d <= 256) {
            let ours = websd::kernels::attention::attention_blocked(&on_gpu(&q), &on_gpu(&k), &on_gpu(&v), false, r)
                .expect("a cubecl tensor");
            let diff =
                (Tensor::<4>::from_data(ours.to_data(), &cpu) - expected.clone()).abs().max().into_scalar::<f32>();
            assert!(diff <= 1e-5, "attention shape {i}, {r} queries a lane: {diff}");
        }
    }
    let wide = Tensor::<4>::zeros([1, 1, 2, websd::kernels::attention::MAX_HEAD_DIM + 1], &gpu);
    assert!(websd::kernels::attention::attention(&wide, &wide, &wide).is_none(), "wider heads go to burn's op");
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// (batch, heads, tokens, head width): CLIP's (77 tokens; SD 1.5's 12 x 64, SD 2's 16 x 64, the tiny
/// model's 4 x 8), one token, and an odd count.
const CAUSAL_SHAPES: [(usize, usize, usize, usize); 4] =
    [(2, 12, 77, 64), (1, 16, 77, 64), (2, 4, 1, 8), (3, 2, 13, 5)];

#[test]
fn causal_attention_kernel_matches_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    for (i, &(b, h, n, d)) in CAUSAL_SHAPES.iter().enumerate() {
        let [q, k, v] = [0; 3].map(|_| Tensor::<4>::random([b, h, n, d], Distribution::Normal(0.0, 1.0), &cpu));
        let options = AttentionModuleOptions { is_causal: true, ..Default::default() };
        let expected = attention(q.clone(), k.clone(), v.clone(), None, None, options);
        let on_gpu = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &gpu);
        let ours = websd::kernels::attention::attention_causal(&on_gpu(&q), &on_gpu(&k), &on_gpu(&v))
            .expect("a cubecl tensor");
        let diff = (Tensor::<4>::from_data(ours.to_data(), &cpu) - expected.clone()).abs().max().into_scalar::<f32>();
        eprintln!("causal attention shape {i} {:?}: max abs diff {diff:e}", CAUSAL_SHAPES[i]);
        assert!(diff <= 1e-5, "causal attention shape {i}: {diff}");
        for r in [2, 3, 8].into_iter().filter(|r| r * 2 * d <= 256) {
            let ours = websd::kernels::attention::attention_blocked(&on_gpu(&q), &on_gpu(&k), &on_gpu(&v), true, r)
                .expect("a cubecl tensor");
            let diff =
                (Tensor::<4>::from_data(ours.to_data(), &cpu) - expected.clone()).abs().max().into_scalar::<f32>();
            assert!(diff <= 1e-5, "causal attention shape {i}, {r} queries a lane: {diff}");
        }
    }
    let (q, k) = (Tensor::<4>::zeros([1, 1, 3, 8], &gpu), Tensor::<4>::zeros([1, 1, 4, 8], &gpu));
    assert!(websd::kernels::attention::attention_causal(&q, &k, &k).is_none(), "causal needs as many queries as keys");
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// Blocks tried beside [`Block::for_shape`]'s, one per shape in turn: blocks wider and taller than the
/// image, one pixel, few channels, workgroups of more than one vector; the first and third at
/// [`Block::MAX_ACCUMULATORS`].
const BLOCKS: [(usize, usize, usize, usize); 5] =
    [(4, 8, 8, 8), (4, 1, 1, 8), (32, 2, 4, 32), (8, 4, 8, 16), (16, 1, 2, 8)];

#[test]
fn lane_conv_kernel_matches_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    for (i, &(b, _, c_out, _, _, _, stride, padding)) in SHAPES.iter().enumerate() {
        let (x, weight, bias, options) = conv_case(i, &cpu);
        let expected = conv2d(x.clone(), weight.clone(), Some(bias.clone()), options.clone());
        let [_, _, out_h, out_w] = expected.dims();
        let (ch, rows, cols, lanes) = BLOCKS[i % BLOCKS.len()];
        let other = Block { ch, rows, cols, lanes };
        for (with_bias, block) in
            [(true, Block::for_shape(c_out, b, out_h, out_w, [256, 64][i % 2])), (i % 2 == 0, other)]
        {
            let bias = with_bias.then_some(&bias);
            let what = format!("shape {i} {:?} bias {with_bias} {block:?}", SHAPES[i]);
            assert!(block.valid(), "{what}: not a block a device is given");
            assert_conv_matches((&x, &weight, bias, &options), &gpu, &what, |x, w, b| {
                websd::kernels::conv2d::conv2d_blocked(x, w, b, stride, padding, block, Add::NONE)
            });
        }
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

#[test]
fn burns_direct_conv_by_name_matches_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    for i in 0..SHAPES.len() {
        let (x, weight, bias, options) = conv_case(i, &cpu);
        let expected = conv2d(x.clone(), weight.clone(), Some(bias.clone()), options.clone());
        let gpu_of = |t: Tensor<4>| Tensor::<4>::from_data(t.to_data(), &gpu);
        let bias_gpu = Tensor::<1>::from_data(bias.to_data(), &gpu);
        let ours = websd::kernels::conv2d::burn_direct(&gpu_of(x), &gpu_of(weight), Some(&bias_gpu), options)
            .expect("a cubecl tensor");
        assert_eq!(ours.dims(), expected.dims(), "shape {i}");
        let diff = (Tensor::<4>::from_data(ours.to_data(), &cpu) - expected.clone()).abs().max().into_scalar::<f32>();
        let scale = expected.abs().max().into_scalar::<f32>();
        assert!(diff <= 1e-4 * scale.max(1.0), "burn's direct conv, shape {i} {:?}: {diff}", SHAPES[i]);
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// (rows, d_in, d_out)
const LINEAR_SHAPES: [(usize, usize, usize); 5] =
    [(512, 64, 64), (154, 32, 32), (7, 5, 130), (2, 320, 1280), (4096, 40, 3)];

#[test]
fn linear_kernel_matches_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    for (i, &(rows, d_in, d_out)) in LINEAR_SHAPES.iter().enumerate() {
        let x = Tensor::<2>::random([rows, d_in], Distribution::Normal(0.0, 1.0), &cpu);
        let weight = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 0.2), &cpu);
        let bias = Tensor::<1>::random([d_out], Distribution::Normal(0.0, 1.0), &cpu);
        for with_bias in [true, false] {
            let mut expected = x.clone().matmul(weight.clone());
            if with_bias {
                expected = expected + bias.clone().unsqueeze_dim(0);
            }
            let bias_gpu = with_bias.then(|| Tensor::<1>::from_data(bias.to_data(), &gpu));
            let on_gpu = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &gpu);
            let tiled = [None, Some(Tiling::SMALL), Some(SMALL_VEC4), Some(tiling(i))];
            for tiling in tiled {
                let ours = websd::kernels::linear::linear_tiled(
                    &on_gpu(&x),
                    &on_gpu(&weight),
                    bias_gpu.as_ref(),
                    None,
                    tiling,
                )
                .expect("a cubecl tensor");
                let diff =
                    (Tensor::<2>::from_data(ours.to_data(), &cpu) - expected.clone()).abs().max().into_scalar::<f32>();
                eprintln!("linear shape {i} tiled {tiling:?}: max abs diff {diff:e}");
                assert!(diff <= 1e-5 * expected.clone().abs().max().into_scalar::<f32>().max(1.0), "tiled {i}: {diff}");
            }
            // The lane kernel in the blocks it picks for 256 and 64 accumulators, and in odd ones.
            let picked = [256, 64].map(|accs| websd::kernels::linear::lane_block(rows, d_out, accs));
            for block in picked.into_iter().chain([(3, 5), (1, 1)]) {
                let ours = websd::kernels::linear::linear_blocked(
                    &on_gpu(&x),
                    &on_gpu(&weight),
                    bias_gpu.as_ref(),
                    None,
                    block,
                )
                .expect("a cubecl tensor");
                assert_eq!(ours.dims(), expected.dims(), "shape {i}");
                let diff =
                    (Tensor::<2>::from_data(ours.to_data(), &cpu) - expected.clone()).abs().max().into_scalar::<f32>();
                eprintln!("linear shape {i} lanes {block:?}: max abs diff {diff:e}");
                assert!(diff <= 1e-5 * expected.clone().abs().max().into_scalar::<f32>().max(1.0), "lanes {i}: {diff}");
            }
            let ours = websd::kernels::linear::linear(&on_gpu(&x), &on_gpu(&weight), bias_gpu.as_ref(), None)
                .expect("a cubecl tensor");
            assert_eq!(ours.dims(), expected.dims(), "shape {i}");
            let diff =
                (Tensor::<2>::from_data(ours.to_data(), &cpu) - expected.clone()).abs().max().into_scalar::<f32>();
            let scale = expected.abs().max().into_scalar::<f32>();
            eprintln!(
                "linear shape {i} {:?} bias {with_bias}: max abs diff {diff:e} (max |out| {scale})",
                LINEAR_SHAPES[i]
            );
            assert!(diff <= 1e-5 * scale.max(1.0), "linear shape {i}: {diff}");
        }
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// The epilogue ([`Add`]): a per-(batch, channel) term and a residual added by the convolution's
/// last step, in both kernels (split-K too), against burn's conv2d and adds on Flex.
#[test]
fn conv_epilogue_matches_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    let on_gpu = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &gpu);
    for i in [0, 3, 4, 5, 7, 8] {
        let (b, _, c_out, _, _, _, stride, padding) = SHAPES[i];
        let (x, weight, bias, options) = conv_case(i, &cpu);
        let plain = conv2d(x.clone(), weight.clone(), Some(bias.clone()), options.clone());
        let [_, _, out_h, out_w] = plain.dims();
        let per_batch = Tensor::<2>::random([b, c_out], Distribution::Normal(0.0, 1.0), &cpu);
        let residual = Tensor::<4>::random(plain.dims(), Distribution::Normal(0.0, 1.0), &cpu);
        let (per_batch_gpu, residual_gpu) = (Tensor::<2>::from_data(per_batch.to_data(), &gpu), on_gpu(&residual));
        let bias_gpu = Tensor::<1>::from_data(bias.to_data(), &gpu);
        for (with_bias, with_term, with_residual) in [(true, true, true), (false, true, false), (true, false, true)] {
            let mut expected = match with_bias {
                true => plain.clone(),
                false => conv2d(x.clone(), weight.clone(), None, options.clone()),
            };
            if with_term {
                expected = expected + per_batch.clone().reshape([b, c_out, 1, 1]);
            }
            if with_residual {
                expected = expected + residual.clone();
            }
            let add = Add {
                per_batch: with_term.then_some(&per_batch_gpu),
                residual: with_residual.then_some(&residual_gpu),
            };
            let bias = with_bias.then_some(&bias_gpu);
            let block = Block::for_shape(c_out, b, out_h, out_w, 64);
            let split_tiling = tiling(i);
            let runs = [
                (
                    "lanes",
                    websd::kernels::conv2d::conv2d_blocked(
                        &on_gpu(&x),
                        &on_gpu(&weight),
                        bias,
                        stride,
                        padding,
                        block,
                        add,
                    ),
                ),
                (
                    "tiled",
                    websd::kernels::conv2d::conv2d_tiled(
                        &on_gpu(&x),
                        &on_gpu(&weight),
                        bias,
                        stride,
                        padding,
                        Tiling::SMALL,
                        add,
                    ),
                ),
                (
                    "split",
                    websd::kernels::conv2d::conv2d_tiled(
                        &on_gpu(&x),
                        &on_gpu(&weight),
                        bias,
                        stride,
                        padding,
                        Tiling { splits: split_tiling.splits.max(2), ..split_tiling },
                        add,
                    ),
                ),
            ];
            for (kernel, ours) in runs {
                let what = format!("{kernel} shape {i} bias {with_bias} term {with_term} residual {with_residual}");
                assert_close(ours.expect("a cubecl tensor"), &expected, 1e-4, &what);
            }
        }
        // A residual or term of another shape is declined (the caller adds it after burn's op).
        let wrong = on_gpu(&Tensor::<4>::zeros([b, c_out, out_h + 1, out_w], &cpu));
        let add = Add { per_batch: None, residual: Some(&wrong) };
        assert!(
            websd::kernels::conv2d::conv2d_tiled(
                &on_gpu(&x),
                &on_gpu(&weight),
                None,
                stride,
                padding,
                Tiling::SMALL,
                add
            )
            .is_none()
        );
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// Every linear kernel with a residual added in its last step.
#[test]
fn linear_residual_matches_flex() {
    use websd::kernels::linear;
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    let on_gpu = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &gpu);
    for &(rows, d_in, d_out) in &LINEAR_SHAPES {
        let x = Tensor::<2>::random([rows, d_in], Distribution::Normal(0.0, 1.0), &cpu);
        let weight = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 0.2), &cpu);
        let bias = Tensor::<1>::random([d_out], Distribution::Normal(0.0, 1.0), &cpu);
        let residual = Tensor::<2>::random([rows, d_out], Distribution::Normal(0.0, 1.0), &cpu);
        let expected = x.clone().matmul(weight.clone()) + bias.clone().unsqueeze_dim(0) + residual.clone();
        let (x, weight, residual) = (on_gpu(&x), on_gpu(&weight), on_gpu(&residual));
        let bias = Tensor::<1>::from_data(bias.to_data(), &gpu);
        let (b, r) = (Some(&bias), Some(&residual));
        let runs = [
            ("rows", linear::linear(&x, &weight, b, r)),
            ("tiled", linear::linear_tiled(&x, &weight, b, r, None)),
            ("split", linear::linear_tiled(&x, &weight, b, r, Some(Tiling { splits: 3, ..Tiling::SMALL }))),
            ("vec4 split", linear::linear_tiled(&x, &weight, b, r, Some(Tiling { splits: 3, ..SMALL_VEC4 }))),
            ("lanes", linear::linear_blocked(&x, &weight, b, r, linear::lane_block(rows, d_out, 64))),
            ("odd lanes", linear::linear_blocked(&x, &weight, b, r, (3, 5))),
        ];
        for (kernel, ours) in runs {
            let what = format!("linear {kernel} [{rows}, {d_in}, {d_out}] + residual");
            assert_close(ours.expect("a cubecl tensor"), &expected, 1e-5, &what);
        }
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// The attention on `[batch, tokens, heads * width]` projections (no head swaps) against burn's
/// on swapped copies, and GEGLU against burn's `value * gelu(gate)`.
#[test]
fn tokens_major_attention_and_geglu_match_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    for (i, &(b, h, n, m, d)) in ATTENTION_SHAPES.iter().enumerate() {
        let [q, k, v] =
            [n, m, m].map(|tokens| Tensor::<3>::random([b, tokens, h * d], Distribution::Normal(0.0, 1.0), &cpu));
        let split = |t: &Tensor<3>| {
            let [b, n, _] = t.dims();
            t.clone().reshape([b, n, h, d]).swap_dims(1, 2)
        };
        let expected = attention(split(&q), split(&k), split(&v), None, None, AttentionModuleOptions::default())
            .swap_dims(1, 2)
            .reshape([b, n, h * d]);
        let on_gpu = |t: &Tensor<3>| Tensor::<3>::from_data(t.to_data(), &gpu);
        let ours = websd::kernels::attention::attention_tokens(&on_gpu(&q), &on_gpu(&k), &on_gpu(&v), h)
            .expect("a cubecl tensor");
        let diff = (Tensor::<3>::from_data(ours.to_data(), &cpu) - expected).abs().max().into_scalar::<f32>();
        eprintln!("tokens-major attention shape {i} {:?}: max abs diff {diff:e}", ATTENTION_SHAPES[i]);
        assert!(diff <= 1e-5, "tokens-major attention shape {i}: {diff}");
    }
    let q = Tensor::<3>::zeros([1, 4, 12], &gpu);
    assert!(websd::kernels::attention::attention_tokens(&q, &q, &q, 5).is_none(), "12 is not 5 heads wide");
    for (rows, inner) in [(512, 256), (3, 5), (77, 1280)] {
        let h = Tensor::<2>::random([rows, 2 * inner], Distribution::Normal(0.0, 2.0), &cpu);
        let expected =
            h.clone().narrow(1, 0, inner) * burn::tensor::activation::gelu(h.clone().narrow(1, inner, inner));
        let ours = websd::kernels::geglu::geglu(&Tensor::<2>::from_data(h.to_data(), &gpu)).expect("a cubecl tensor");
        assert_close(ours, &expected, 1e-5, &format!("geglu [{rows}, 2 x {inner}]"));
    }
    assert!(websd::kernels::geglu::geglu(&Tensor::<2>::zeros([2, 3], &gpu)).is_none(), "an odd width");
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// (batch, channels, height, width, groups): SD's 32 groups, odd sizes, blocks shorter than a
/// workgroup (1x1 images), and groups of 32,768 and 122,880 values (the U-Net's last up block at 512
/// px): llvmpipe ends a shader's loops after 65535 iterations in all, silently, so a lane alone
/// cannot take them ([`websd::kernels::norm::Layout::Lane`]).
const GROUP_NORM_SHAPES: [(usize, usize, usize, usize, usize); 6] = [
    (2, 64, 8, 8, 32),
    (1, 12, 5, 7, 3),
    (3, 6, 1, 1, 2),
    (4, 32, 16, 16, 32),
    (1, 64, 64, 64, 8),
    (1, 960, 64, 64, 32),
];

const LAYOUTS: [Layout; 2] = [Layout::Workgroup, Layout::Lane];

#[test]
fn norm_kernels_match_flex() {
    use burn::nn::GroupNormConfig;
    use burn::tensor::activation::silu;
    use websd::kernels::norm::{group_norm, layer_norm};
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    let close = |ours: Tensor<4>, expected: Tensor<4>, what: &str| assert_close(ours, &expected, 1e-5, what);
    for (i, &(b, c, h, w, groups)) in GROUP_NORM_SHAPES.iter().enumerate() {
        // Off-centre values, so a one-pass variance would lose digits.
        let x = Tensor::<4>::random([b, c, h, w], Distribution::Normal(3.0, 2.0), &cpu);
        let mut norm = GroupNormConfig::new(groups, c).with_epsilon(1e-6).init(&cpu);
        let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &cpu);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &cpu);
        norm.gamma = Some(burn::module::Param::from_tensor(gamma.clone()));
        norm.beta = Some(burn::module::Param::from_tensor(beta.clone()));
        let affine_out = norm.forward(x.clone());
        let plain = GroupNormConfig::new(groups, c).with_epsilon(1e-6).with_affine(false).init(&cpu).forward(x.clone());
        let (x_gpu, gamma_gpu, beta_gpu) = (
            Tensor::<4>::from_data(x.to_data(), &gpu),
            Tensor::<1>::from_data(gamma.to_data(), &gpu),
            Tensor::<1>::from_data(beta.to_data(), &gpu),
        );
        for (then_silu, layout) in [false, true].into_iter().flat_map(|s| LAYOUTS.map(|l| (s, l))) {
            let expected = |t: &Tensor<4>| if then_silu { silu(t.clone()) } else { t.clone() };
            let norm = |affine| group_norm(&x_gpu, groups, affine, 1e-6, then_silu, layout).unwrap();
            let what = format!("group norm {i} silu {then_silu} {layout:?}");
            close(norm(Some((&gamma_gpu, &beta_gpu))), expected(&affine_out), &what);
            close(norm(None), expected(&plain), &format!("{what} without affine"));
        }
    }
    let zeros = Tensor::<4>::zeros([1, 6, 2, 2], &gpu);
    assert!(group_norm(&zeros, 4, None, 1e-6, false, Layout::Lane).is_none(), "4 groups of 6 channels");
    // (rows, features): CLIP's and the transformer blocks' widths, one feature, a row shorter and one
    // longer than a workgroup.
    for (rows, features) in [(154, 32), (2048, 320), (3, 1), (5, 7), (2, 1280)] {
        let x = Tensor::<4>::random([1, 1, rows, features], Distribution::Normal(-2.0, 3.0), &cpu);
        let gamma = Tensor::<1>::random([features], Distribution::Normal(1.0, 0.5), &cpu);
        let beta = Tensor::<1>::random([features], Distribution::Normal(0.0, 0.5), &cpu);
        let expected = burn::tensor::module::layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5);
        let on_gpu = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data(), &gpu);
        let x_gpu = Tensor::<4>::from_data(x.to_data(), &gpu);
        for layout in LAYOUTS {
            let ours = layer_norm(&x_gpu, Some((&on_gpu(&gamma), &on_gpu(&beta))), 1e-5, layout).unwrap();
            close(ours, expected.clone(), &format!("layer norm [{rows}, {features}] {layout:?}"));
        }
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// The tuner ([`websd::kernels::tune`]) on the device: every candidate checked against burn's output
/// and timed, the fastest picked; a shape given a pick runs that kernel through the models' conv, with
/// burn's numerics; on Flex nothing is measured.
#[test]
fn tuned_convolution_picks_the_fastest_checked_kernel() {
    use websd::kernels::tune::{self, ConvPick, ConvShape};
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    // Odd shapes no other test runs, so no other test's convolution takes these picks.
    for (i, &(b, c_in, c_out, h, w, k, stride, padding)) in
        [(2, 19, 23, 13, 11, 3, 1, [1; 4]), (1, 21, 27, 12, 10, 3, 2, [0, 0, 1, 1]), (3, 29, 17, 7, 5, 1, 1, [0; 4])]
            .iter()
            .enumerate()
    {
        let shape =
            ConvShape { batch: b, c_in, height: h, width: w, c_out, kernel: [k, k], stride, padding, f16: false };
        let found =
            pollster::block_on(tune::measure_conv(shape, &gpu, websd::gpu::uncaptured_errors)).expect("read back");
        let candidates = tune::candidates(&shape);
        assert!(candidates.len() >= 3 && candidates[0] == ConvPick::Burn, "{candidates:?}");
        assert_eq!(found.times_ms.iter().map(|(p, _)| *p).collect::<Vec<_>>(), candidates);
        eprintln!("{shape:?}: {:?}, {:?}", found.pick, found.times_ms);
        // Our kernels and burn's agree here, so each was timed, and the pick is the fastest.
        let times: Vec<f64> = found.times_ms.iter().map(|(_, t)| t.expect("checked and timed")).collect();
        assert!(times.iter().all(|t| t.is_finite() && *t > 0.0), "{times:?}");
        let fastest = times.iter().cloned().fold(f64::INFINITY, f64::min);
        assert_eq!(found.times_ms.iter().find(|(_, t)| *t == Some(fastest)).unwrap().0, found.pick);
        assert!(found.gflops > 0.0);

        // Each candidate in turn as the shape's pick: the models' convolution runs it, with a residual.
        let (x, weight, bias, options) = {
            let x = Tensor::<4>::random([b, c_in, h, w], Distribution::Normal(0.0, 1.0), &cpu);
            let weight = Tensor::<4>::random([c_out, c_in, k, k], Distribution::Normal(0.0, 0.2), &cpu);
            let bias = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), &cpu);
            let [top, left, bottom, right] = padding;
            (x, weight, bias, ConvOptions::new_with_padding([stride; 2], [(top, bottom), (left, right)], [1, 1], 1))
        };
        let plain = conv2d(x.clone(), weight.clone(), Some(bias.clone()), options);
        let residual = Tensor::<4>::random(plain.dims(), Distribution::Normal(0.0, 1.0), &cpu);
        let expected = plain + residual.clone();
        let on_gpu = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &gpu);
        let (residual_gpu, bias_gpu) = (on_gpu(&residual), Tensor::<1>::from_data(bias.to_data(), &gpu));
        for pick in candidates {
            tune::set_conv_pick(shape, pick);
            assert_eq!(tune::conv_pick(shape), Some(pick));
            let add = Add { per_batch: None, residual: Some(&residual_gpu) };
            let ours = websd::models::conv2d_with(on_gpu(&x), &on_gpu(&weight), Some(&bias_gpu), stride, padding, add);
            assert_close(ours, &expected, 1e-4, &format!("tuned shape {i} as {pick:?}"));
        }
    }
    // A wrong or broken output is never timed: off by a little more than the tolerance, NaN, infinite.
    let reference = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 1.0), &gpu);
    let scale = 4.0;
    let agrees = |t: Tensor<4>| pollster::block_on(tune::agrees(t, &reference, scale, false));
    assert!(agrees(reference.clone()));
    assert!(agrees(reference.clone() + 1e-3 * scale * 0.9));
    assert!(!agrees(reference.clone() + 1e-3 * scale * 1.1));
    let one_bad = |v: f32| {
        let mask = Tensor::<4>::zeros([2, 3, 5, 7], &gpu)
            .slice_assign([1..2, 2..3, 4..5, 6..7], Tensor::ones([1, 1, 1, 1], &gpu));
        reference.clone().mask_fill(mask.equal_elem(1.0), v)
    };
    assert!(!agrees(one_bad(f32::NAN)));
    assert!(!agrees(one_bad(f32::INFINITY)));
    assert!(!agrees(one_bad(100.0)));
    // Shapes on Flex are neither recorded nor measured there.
    assert!(pollster::block_on(websd::models::tuning::tune_pending(&cpu, websd::gpu::uncaptured_errors)).is_empty());
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// Attention chosen by shape on the device ([`websd::kernels::tune`], measured by
/// `models::attention::measure_attention`): burn's op, our kernel and matmul + softmax each checked
/// against burn's output and timed, the fastest picked; each as the shape's pick runs through
/// `attention_heads` with burn's numerics on Flex.
#[test]
fn tuned_attention_picks_the_fastest_checked_way() {
    use websd::kernels::tune::{self, AttentionPick, AttentionShape};
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    // Shapes no other test runs (their picks are global).
    for (batch, heads, queries, keys, head_dim) in [(2, 3, 37, 37, 12), (1, 5, 29, 77, 8)] {
        let shape =
            AttentionShape { batch, heads, queries, keys, head_dim, value_dim: head_dim, f16: false, upcast: false };
        let found =
            pollster::block_on(websd::models::attention::measure_attention(shape, &gpu, websd::gpu::uncaptured_errors))
                .expect("read back");
        eprintln!("{shape:?}: {:?}, {:?}", found.pick, found.times_ms);
        let times: Vec<f64> = found.times_ms.iter().map(|(_, t)| t.expect("checked and timed")).collect();
        assert_eq!(times.len(), 3);
        let fastest = times.iter().cloned().fold(f64::INFINITY, f64::min);
        assert_eq!(found.times_ms.iter().find(|(_, t)| *t == Some(fastest)).unwrap().0, found.pick);

        let random = |n| Tensor::<3>::random([batch, n, heads * head_dim], Distribution::Normal(0.0, 1.0), &cpu);
        let (q, k, v) = (random(queries), random(keys), random(keys));
        let split = |t: &Tensor<3>| {
            let [b, n, d] = t.dims();
            t.clone().reshape([b, n, heads, d / heads]).swap_dims(1, 2)
        };
        let expected = attention(split(&q), split(&k), split(&v), None, None, AttentionModuleOptions::default())
            .swap_dims(1, 2)
            .reshape([batch, queries, heads * head_dim]);
        let on_gpu = |t: &Tensor<3>| Tensor::<3>::from_data(t.to_data(), &gpu);
        for pick in [AttentionPick::Burn, AttentionPick::Ours, AttentionPick::Matmul] {
            tune::set_attention_pick(shape, pick);
            let ours = websd::models::attention::attention_heads(on_gpu(&q), on_gpu(&k), on_gpu(&v), heads, false);
            assert_close(ours, &expected, 1e-4, &format!("{shape:?} as {pick:?}"));
        }
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// The linear layer, the normalizations and GEGLU chosen by shape on the device the same way
/// ([`websd::kernels::tune`]): every candidate checked against burn's output and timed, the fastest
/// picked; each candidate as the shape's pick gives burn's numerics on Flex.
#[test]
fn tuned_linear_norm_and_geglu_pick_the_fastest_checked_kernels() {
    use burn::module::Module;
    use websd::kernels::tune::{self, GegluPick, GegluShape, LinearShape, NormPick, NormShape, Tuning};
    use websd::models::normalization::measure_norm;
    let (gpu, _) = websd::gpu::wgpu_device().expect("a wgpu adapter");
    let cpu = Device::flex();
    let errors = websd::gpu::uncaptured_errors;
    fn timed<S: std::fmt::Debug, P: std::fmt::Debug + Copy + PartialEq>(found: &Tuning<S, P>, count: usize) {
        eprintln!("{:?}: {:?}, {:?}", found.shape, found.pick, found.times_ms);
        let times: Vec<f64> = found.times_ms.iter().map(|(_, t)| t.expect("checked and timed")).collect();
        assert_eq!(times.len(), count);
        let fastest = times.iter().cloned().fold(f64::INFINITY, f64::min);
        assert_eq!(found.times_ms.iter().find(|(_, t)| *t == Some(fastest)).unwrap().0, found.pick);
        assert!(found.gflops > 0.0 && found.gbs > 0.0);
    }
    let normal = Distribution::Normal(0.0, 1.0);
    let on_gpu = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &gpu);

    // Linear layers: one row, odd sides, many rows (odd shapes no other test runs).
    for (rows, d_in, d_out) in [(1, 37, 45), (13, 29, 70), (300, 24, 40)] {
        let shape = LinearShape { rows, d_in, d_out, f16: false };
        let found = pollster::block_on(tune::measure_linear(shape, &gpu, errors)).expect("read back");
        let candidates = tune::linear_candidates(&shape);
        assert_eq!(found.times_ms.iter().map(|(p, _)| *p).collect::<Vec<_>>(), candidates);
        timed(&found, candidates.len());
        let (x, weight) =
            (Tensor::<2>::random([rows, d_in], normal, &cpu), Tensor::<2>::random([d_in, d_out], normal, &cpu));
        let (bias, residual) =
            (Tensor::<1>::random([d_out], normal, &cpu), Tensor::<2>::random([rows, d_out], normal, &cpu));
        let expected = x.clone().matmul(weight.clone()) + bias.clone().unsqueeze_dim(0) + residual.clone();
        let bias_gpu = Tensor::<1>::from_data(bias.to_data(), &gpu);
        for pick in candidates {
            let out = tune::run_linear(pick, &on_gpu(&x), &on_gpu(&weight), Some(&bias_gpu), Some(&on_gpu(&residual)));
            assert_close(out.expect("runs"), &expected, 1e-4, &format!("{shape:?} as {pick:?}"));
        }
    }

    // GroupNorm (+ SiLU) and LayerNorm: each pick through the models' own ops.
    let candidates = [NormPick::Burn, NormPick::Ours(Layout::Workgroup), NormPick::Ours(Layout::Lane)];
    for (batch, channels, [h, w], groups, silu) in [(2, 12, [5, 7], 3, true), (1, 10, [9, 3], 5, false)] {
        let shape = NormShape::Group { batch, channels, pixels: h * w, groups, silu, f16: false };
        timed(&pollster::block_on(measure_norm(shape, &gpu, errors)).expect("read back"), 3);
        let mut norm = burn::nn::GroupNormConfig::new(groups, channels).init(&cpu);
        norm.gamma = Some(burn::module::Param::from_tensor(Tensor::random([channels], normal, &cpu)));
        norm.beta = Some(burn::module::Param::from_tensor(Tensor::random([channels], normal, &cpu)));
        let x = Tensor::<4>::random([batch, channels, h, w], normal, &cpu);
        let expected = match silu {
            true => websd::models::group_norm_silu(&norm, x.clone()),
            false => websd::models::group_norm(&norm, x.clone()),
        };
        let norm_gpu = norm.clone().to_device(&gpu);
        for pick in candidates {
            tune::set_norm_pick(shape, pick);
            let x = Tensor::<4>::from_data(x.to_data(), &gpu);
            let out = match silu {
                true => websd::models::group_norm_silu(&norm_gpu, x),
                false => websd::models::group_norm(&norm_gpu, x),
            };
            assert_close(out, &expected, 1e-4, &format!("{shape:?} as {pick:?}"));
        }
    }
    let (rows, features) = (11, 19);
    let shape = NormShape::Layer { rows, features, f16: false };
    timed(&pollster::block_on(measure_norm(shape, &gpu, errors)).expect("read back"), 3);
    let norm = websd::models::LayerNorm {
        gamma: burn::module::Param::from_tensor(Tensor::random([features], normal, &cpu)),
        beta: burn::module::Param::from_tensor(Tensor::random([features], normal, &cpu)),
        epsilon: 1e-5,
    };
    let x = Tensor::<3>::random([1, rows, features], normal, &cpu);
    let expected = norm.forward(x.clone());
    let norm_gpu = norm.clone().to_device(&gpu);
    for pick in candidates {
        tune::set_norm_pick(shape, pick);
        let out = norm_gpu.forward(Tensor::<3>::from_data(x.to_data(), &gpu));
        assert_close(out, &expected, 1e-4, &format!("{shape:?} as {pick:?}"));
    }

    // GEGLU.
    let (rows, inner) = (7, 33);
    let shape = GegluShape { rows, inner, f16: false };
    timed(&pollster::block_on(tune::measure_geglu(shape, &gpu, errors)).expect("read back"), 2);
    let h = Tensor::<2>::random([rows, 2 * inner], normal, &cpu);
    let expected = tune::run_geglu(GegluPick::Burn, &h).unwrap();
    for pick in [GegluPick::Burn, GegluPick::Ours] {
        assert_close(tune::run_geglu(pick, &on_gpu(&h)).expect("runs"), &expected, 1e-5, &format!("{pick:?}"));
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}
