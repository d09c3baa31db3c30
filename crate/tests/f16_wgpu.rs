//! fp16 weights on a device that computes in f16 (native wgpu; lavapipe has `shader-f16`): the weights
//! stay f16 and the text encoder still agrees with the f32 reference to f16 precision. Its own test
//! binary, because a device's precision must be configured before its first tensor.

mod common;

use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use websd::kernels::conv2d::Add;
use websd::models::clip::ClipTextConfig;
use websd::tokenizer::ClipTokenizer;

/// The shared wgpu device, computing in f16 (configured once, before any tensor: both tests use it).
fn f16_device() -> (burn::tensor::Device, websd::gpu::GpuInfo) {
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    let (mut device, info) = websd::gpu::wgpu_device().expect("a wgpu adapter (install mesa-vulkan-drivers)");
    assert!(info.shader_f16, "this check needs shader-f16: {info:?}");
    CONFIGURED.call_once(|| device.configure(FloatDType::F16).unwrap());
    (device, info)
}

/// The whole pipeline from the fp16 files with weights *and compute* in f16, as the browser engine runs
/// where WebGPU has `shader-f16`: within the browser tests' 2e-2 of diffusers (fp32). (Before GroupNorm
/// kept its statistics in f32, sums of squares overflowed f16 and the image was 0.59 off.)
#[test]
fn txt2img_in_f16_matches_diffusers() {
    use websd::pipeline::{GenerateRequest, StableDiffusion};
    let (device, info) = f16_device();
    let mut model = StableDiffusion::load_dir(
        &common::fixtures_dir().join("tiny-sd"),
        Some(websd::weights::Variant::Fp16),
        &device,
    )
    .unwrap();
    let run = common::Run::load("txt2img_ddim");
    let (config, kind) = common::run_scheduler(&run);
    model.scheduler_config = config;
    let request = GenerateRequest {
        prompt: run.meta("prompt").unwrap(),
        negative_prompt: run.meta("negative_prompt").unwrap(),
        steps: 8,
        seed: 0,
        scheduler: Some(kind),
        ..Default::default()
    };
    let out = model.generate(&request, false, |_| true).unwrap();
    assert_eq!(out.images.dtype(), DType::F16);
    let diff = common::max_diff(out.images.cast(FloatDType::F32), &run.f32("image").1);
    eprintln!("txt2img_ddim in f16 on {}: image max abs diff {diff:e} vs diffusers (fp32)", info.adapter);
    assert!(diff.is_finite() && diff <= 2e-2, "{diff}");
}

#[test]
fn fp16_weights_stay_f16_on_an_f16_device() {
    let (device, info) = f16_device();

    let root = common::fixtures_dir().join("tiny-sd/text_encoder");
    let config = ClipTextConfig::from_json(&std::fs::read_to_string(root.join("config.json")).unwrap()).unwrap();
    let model = config.load(std::fs::File::open(root.join("model.fp16.safetensors")).unwrap(), &device).unwrap();

    let tokenizer = ClipTokenizer::from_dir(&common::fixtures_dir().join("tiny-sd/tokenizer")).unwrap();
    let run = common::Run::load("txt2img_ddim");
    let ids: Vec<i64> = tokenizer.encode(&run.meta("prompt").unwrap()).unwrap().ids.iter().map(|&i| i as i64).collect();
    let out = model.forward(Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 77]), &device)).last_hidden_state;
    assert_eq!(out.dtype(), DType::F16);
    let got: Vec<f32> = out.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap();
    let (_, want) = run.f32("prompt_embeds");
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("CLIP in f16 on {}: max abs diff {diff:e} vs the f32 reference", info.adapter);
    // f16 compute against the f32 reference: 3.3e-3 measured on lavapipe; 10 f16 ulps at 1.0 is ~1e-2.
    assert!(diff.is_finite() && diff <= 1e-2, "{diff}");
}

/// `upcast_attention` (SD 2.1): scores q·kᵀ/√d of 8e4 overflow f16's 65504, so an f16 softmax gives
/// NaN; upcast, the same f16 inputs give the f32 answer to f16 precision.
#[test]
fn upcast_attention_stays_finite_where_f16_scores_overflow() {
    use websd::models::attention::attention_upcast;
    let (device, info) = f16_device();
    // 1 batch, 2 heads, 4 queries, 3 keys, head_dim 64; q = k = 100 gives scores 100·100·64/8 = 80000.
    // The last key's first channel is 99.9375 (exact in f16), so its score is 0.78 lower: the softmax
    // is not uniform.
    let [b, h, n, m, d] = [1, 2, 4, 3, 64];
    let q: Vec<f32> = vec![100.0; b * h * n * d];
    let k: Vec<f32> = (0..b * h * m * d).map(|i| if i % (m * d) == (m - 1) * d { 99.9375 } else { 100.0 }).collect();
    let v: Vec<f32> = (0..b * h * m * d).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
    let tensor = |data: &[f32], len: usize| {
        Tensor::<4>::from_data(TensorData::new(data.to_vec(), [b, h, len, d]), &device).cast(FloatDType::F16)
    };
    let (q16, k16, v16) = (tensor(&q, n), tensor(&k, m), tensor(&v, m));
    assert_eq!(q16.dtype(), DType::F16);
    let values = |t: Tensor<4>| t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap();

    let plain = values(attention_upcast(q16.clone(), k16.clone(), v16.clone(), false));
    let upcast = attention_upcast(q16, k16, v16, true);
    assert_eq!(upcast.dtype(), DType::F16);
    let upcast = values(upcast);
    // The reference, in f64 (every input is exact in f16).
    let mut want = vec![0f64; b * h * n * d];
    for head in 0..b * h {
        for i in 0..n {
            let scores: Vec<f64> = (0..m)
                .map(|j| (0..d).map(|c| 100.0 * k[(head * m + j) * d + c] as f64).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..d {
                let acc: f64 = (0..m).map(|j| weights[j] / total * v[(head * m + j) * d + c] as f64).sum();
                want[(head * n + i) * d + c] = acc;
            }
        }
    }
    let diff = upcast.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    let plain_finite = plain.iter().all(|x| x.is_finite());
    eprintln!(
        "upcast attention on {}: max diff {diff:e} vs f64; without upcast all finite: {plain_finite}",
        info.adapter
    );
    assert!(diff <= 5e-3, "upcast attention is off by {diff}");
    assert!(!plain_finite, "f16 scores of 8e4 should overflow without upcast_attention");
}

/// SDXL on an f16 device: the U-Net and text encoders in f16, the VAE in f32 as its config asks
/// (`force_upcast`, diffusers' `upcast_vae`). txt2img's image within the browser tests' 2e-2 of diffusers
/// (fp32); img2img's encoding (in f32, its noise too, then cast to f16) within f16 rounding of diffusers'
/// initial latents. (img2img's final image in f16 measured 2.0e-2 and 2.4e-2 in two processes: the U-Net's
/// f16 error, which no bound of the contract covers, so it is not asserted.)
#[test]
fn sdxl_in_f16_runs_its_vae_in_f32() {
    use websd::pipeline::{GenerateRequest, Image, StableDiffusion};
    let (device, info) = f16_device();
    let sd = StableDiffusion::load_dir(&common::fixtures_dir().join("tiny-sdxl"), None, &device).unwrap();
    assert!(sd.vae_upcast, "tiny-sdxl's VAE says force_upcast");
    for name in ["txt2img_euler", "img2img_euler"] {
        let run = common::Run::from_path(&common::fixtures_dir().join(format!("sdxl-runs/{name}/tensors.safetensors")));
        let meta = |k: &str| run.meta(k).unwrap();
        let init_image = run.has("init_image").then(|| {
            let (shape, data) = run.f32("init_image");
            Image { width: shape[1], height: shape[0], channels: 3, data }
        });
        let img2img = init_image.is_some();
        let request = GenerateRequest {
            prompt: meta("prompt"),
            prompt_2: Some(meta("prompt_2")).filter(|p| !p.is_empty()),
            negative_prompt: meta("negative_prompt"),
            steps: meta("steps").parse().unwrap(),
            guidance: meta("guidance_scale").parse().unwrap(),
            strength: meta("strength").parse().unwrap(),
            init_image,
            ..Default::default()
        };
        let out = sd.generate(&request, img2img, |_| true).unwrap();
        assert_eq!(out.images.dtype(), DType::F32, "decoded in f32");
        if img2img {
            let (_, _, ours) = out.dump.iter().find(|(k, _, _)| k == "initial_latents").unwrap();
            let want = run.f32("initial_latents").1;
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            eprintln!("SDXL img2img in f16 (VAE in f32): initial latents max abs diff {diff:e} (values up to {scale})");
            // The f32 encoding cast to f16, then the scheduler's add_noise in f16: a few f16 ulps
            // (2^-10 relative) of the largest value.
            assert!(diff <= 4.0 * scale / 1024.0, "initial latents {diff}");
        } else {
            let diff = common::max_diff(out.images, &run.f32("image").1);
            eprintln!(
                "SDXL {name} in f16 (VAE in f32) on {}: image max abs diff {diff:e} vs diffusers (fp32)",
                info.adapter
            );
            assert!(diff.is_finite() && diff <= 2e-2, "{name}: {diff}");
        }
    }
}

/// Our kernels (`websd::kernels`) in f16 (f32 accumulation) against burn's ops on Flex in f32, on
/// awkward shapes: within f16's rounding of the inputs and the output.
#[test]
fn kernels_in_f16_match_flex() {
    use burn::tensor::module::{attention, conv2d};
    use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
    use burn::tensor::{Device, Distribution};
    let (device, _) = f16_device();
    let cpu = Device::flex();
    // Rounded to f16 first, so both sides start from the same values.
    let rounded =
        |t: Tensor<4>| Tensor::<4>::from_data(t.to_data().convert::<burn::tensor::f16>().convert::<f32>(), &cpu);
    let on_gpu = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data().convert::<burn::tensor::f16>(), &device);
    let back = |t: Tensor<4>| Tensor::<4>::from_data(t.to_data().convert::<f32>(), &cpu);
    use websd::kernels::conv2d::Tiling;
    // The f16 tile of 128 x 128 fills 8 KiB of workgroup memory; split-K sums partials in f32; the
    // vectorized kernel stages vectors of four f16 (as f32), read ahead or not.
    let vec4 = |t: Tiling| t.vectorized().expect("a vectorized tile");
    let ahead = |t: Tiling| vec4(t).prefetched().expect("a vectorized tiling");
    for (b, c_in, c_out, h, w, stride, padding, tiling) in [
        (2, 32, 32, 16, 16, 1, [1; 4], Tiling::SMALL),
        (1, 17, 70, 5, 7, 1, [1; 4], Tiling { bm: 128, bn: 128, splits: 1, ..Tiling::SMALL }),
        (4, 8, 8, 9, 9, 2, [0, 0, 1, 1], Tiling::SMALL),
        (1, 130, 40, 6, 6, 1, [1; 4], Tiling { bn: 128, splits: 4, ..Tiling::SMALL }),
        (2, 32, 32, 16, 16, 1, [1; 4], vec4(Tiling::SMALL)),
        (1, 17, 70, 5, 7, 1, [1; 4], vec4(Tiling { bm: 128, bn: 128, splits: 1, ..Tiling::SMALL })),
        (1, 130, 40, 6, 6, 1, [1; 4], vec4(Tiling { bn: 128, splits: 4, ..Tiling::SMALL })),
        (1, 17, 70, 5, 7, 1, [1; 4], ahead(Tiling { bm: 128, bn: 128, splits: 1, ..Tiling::SMALL })),
        (1, 130, 40, 6, 6, 1, [1; 4], ahead(Tiling { bn: 128, splits: 4, ..Tiling::SMALL })),
    ] {
        let x = rounded(Tensor::random([b, c_in, h, w], Distribution::Normal(0.0, 1.0), &cpu));
        let weight = rounded(Tensor::random([c_out, c_in, 3, 3], Distribution::Normal(0.0, 0.2), &cpu));
        let [top, left, bottom, right] = padding;
        let options = ConvOptions::new_with_padding([stride; 2], [(top, bottom), (left, right)], [1, 1], 1);
        let expected = conv2d(x.clone(), weight.clone(), None, options);
        let ours = websd::kernels::conv2d::conv2d_tiled(
            &on_gpu(&x),
            &on_gpu(&weight),
            None,
            stride,
            padding,
            tiling,
            Add::NONE,
        )
        .unwrap();
        assert_eq!(ours.dtype(), DType::F16);
        let diff = (back(ours) - expected.clone()).abs().max().into_scalar::<f32>();
        let scale = expected.clone().abs().max().into_scalar::<f32>();
        eprintln!(
            "conv f16 {:?} {tiling:?}: max abs diff {diff:e} (max |out| {scale})",
            (b, c_in, c_out, h, w, stride)
        );
        assert!(diff <= 1e-3 * scale, "conv in f16 differs by {diff}");
        // The lane kernel (CPU devices), in its block for the shape.
        let [_, _, out_h, out_w] = expected.dims();
        let block = websd::kernels::conv2d::Block::for_shape(c_out, b, out_h, out_w, 64);
        let ours = websd::kernels::conv2d::conv2d_blocked(
            &on_gpu(&x),
            &on_gpu(&weight),
            None,
            stride,
            padding,
            block,
            Add::NONE,
        )
        .unwrap();
        assert_eq!(ours.dtype(), DType::F16);
        let diff = (back(ours) - expected.clone()).abs().max().into_scalar::<f32>();
        eprintln!("conv f16 lanes {block:?}: max abs diff {diff:e} (max |out| {scale})");
        assert!(diff <= 1e-3 * scale, "lane conv in f16 differs by {diff}");
        // With the epilogue: a per-(batch, channel) term and a residual, added in f32 before rounding.
        let term = Tensor::<2>::from_data(
            Tensor::<2>::random([b, c_out], Distribution::Normal(0.0, 1.0), &cpu)
                .to_data()
                .convert::<burn::tensor::f16>(),
            &cpu,
        );
        let residual = rounded(Tensor::random(expected.dims(), Distribution::Normal(0.0, 1.0), &cpu));
        let term_gpu = Tensor::<2>::from_data(term.to_data(), &device);
        let expected = expected + term.reshape([b, c_out, 1, 1]) + residual.clone();
        let scale = expected.clone().abs().max().into_scalar::<f32>();
        let add = Add { per_batch: Some(&term_gpu), residual: Some(&on_gpu(&residual)) };
        let (x, weight) = (on_gpu(&x), on_gpu(&weight));
        let runs = [
            websd::kernels::conv2d::conv2d_tiled(&x, &weight, None, stride, padding, tiling, add),
            websd::kernels::conv2d::conv2d_blocked(&x, &weight, None, stride, padding, block, add),
        ];
        for ours in runs {
            let ours = ours.unwrap();
            assert_eq!(ours.dtype(), DType::F16);
            let diff = (back(ours) - expected.clone()).abs().max().into_scalar::<f32>();
            eprintln!("conv f16 + term + residual: max abs diff {diff:e} (max |out| {scale})");
            assert!(diff <= 1e-3 * scale, "conv in f16 with its epilogue differs by {diff}");
        }
    }
    for (b, heads, n, m, d) in [(2, 8, 256, 256, 8), (2, 8, 100, 77, 40), (1, 2, 33, 300, 64)] {
        let [q, k, v] = [[b, heads, n, d], [b, heads, m, d], [b, heads, m, d]]
            .map(|shape| rounded(Tensor::random(shape, Distribution::Normal(0.0, 1.0), &cpu)));
        let expected = attention(q.clone(), k.clone(), v.clone(), None, None, AttentionModuleOptions::default());
        let ours = websd::kernels::attention::attention(&on_gpu(&q), &on_gpu(&k), &on_gpu(&v)).unwrap();
        let diff = (back(ours) - expected.clone()).abs().max().into_scalar::<f32>();
        eprintln!("attention f16 {:?}: max abs diff {diff:e}", (b, heads, n, m, d));
        assert!(diff <= 2e-3, "attention in f16 differs by {diff}");
        // On the projections' own layout, `[batch, tokens, heads * width]`.
        let tokens = |t: &Tensor<4>| {
            let [b, h, n, d] = t.dims();
            on_gpu(&t.clone().swap_dims(1, 2).reshape([1, b, n, h * d])).reshape([b, n, h * d])
        };
        let ours = websd::kernels::attention::attention_tokens(&tokens(&q), &tokens(&k), &tokens(&v), heads).unwrap();
        let ours = back(ours.reshape([b, n, heads, d]).swap_dims(1, 2));
        let diff = (ours - expected).abs().max().into_scalar::<f32>();
        assert!(diff <= 2e-3, "tokens-major attention in f16 differs by {diff}");
    }
    // GEGLU: f16 in and out, the GELU in f32.
    let h = rounded(Tensor::random([1, 1, 77, 2 * 320], Distribution::Normal(0.0, 2.0), &cpu));
    let (value, gate) = (h.clone().narrow(3, 0, 320), h.clone().narrow(3, 320, 320));
    let expected = value * burn::tensor::activation::gelu(gate);
    let ours = websd::kernels::geglu::geglu(&on_gpu(&h).reshape([77, 640])).unwrap();
    assert_eq!(ours.dtype(), DType::F16);
    let diff = (back(ours.reshape([1, 1, 77, 320])) - expected.clone()).abs().max().into_scalar::<f32>();
    let scale = expected.abs().max().into_scalar::<f32>();
    eprintln!("geglu f16: max abs diff {diff:e} (max |out| {scale})");
    assert!(diff <= 1e-3 * scale, "geglu in f16 differs by {diff}");
    // GroupNorm + SiLU and LayerNorm: f16 in and out, statistics in f32, both layouts.
    use websd::kernels::norm::{Layout, group_norm, layer_norm};
    let x = rounded(Tensor::random([2, 64, 9, 9], Distribution::Normal(2.0, 3.0), &cpu));
    let params = |c: usize| {
        let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &cpu);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &cpu);
        let f16 =
            |t: Tensor<1>| Tensor::<1>::from_data(t.to_data().convert::<burn::tensor::f16>().convert::<f32>(), &cpu);
        (f16(gamma), f16(beta))
    };
    let on_gpu_1 = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data().convert::<burn::tensor::f16>(), &device);
    let (gamma, beta) = params(64);
    let mut norm = burn::nn::GroupNormConfig::new(32, 64).init(&cpu);
    norm.gamma = Some(burn::module::Param::from_tensor(gamma.clone()));
    norm.beta = Some(burn::module::Param::from_tensor(beta.clone()));
    let expected = burn::tensor::activation::silu(norm.forward(x.clone()));
    let scale = expected.clone().abs().max().into_scalar::<f32>();
    let tokens = x.clone().reshape([1, 2, 64, 81]);
    let (ln_gamma, ln_beta) = params(81);
    let ln_expected = burn::tensor::module::layer_norm(tokens.clone(), ln_gamma.clone(), Some(ln_beta.clone()), 1e-5);
    let ln_scale = ln_expected.clone().abs().max().into_scalar::<f32>();
    for layout in [Layout::Workgroup, Layout::Lane] {
        let ours =
            group_norm(&on_gpu(&x), 32, Some((&on_gpu_1(&gamma), &on_gpu_1(&beta))), 1e-5, true, layout).unwrap();
        assert_eq!(ours.dtype(), DType::F16);
        let diff = (back(ours) - expected.clone()).abs().max().into_scalar::<f32>();
        eprintln!("group norm + silu f16 {layout:?}: max abs diff {diff:e} (max |out| {scale})");
        assert!(diff <= 1e-3 * scale, "group norm in f16 differs by {diff}");
        let ours =
            layer_norm(&on_gpu(&tokens), Some((&on_gpu_1(&ln_gamma), &on_gpu_1(&ln_beta))), 1e-5, layout).unwrap();
        let diff = (back(ours) - ln_expected.clone()).abs().max().into_scalar::<f32>();
        eprintln!("layer norm f16 {layout:?}: max abs diff {diff:e} (max |out| {ln_scale})");
        assert!(diff <= 1e-3 * ln_scale, "layer norm in f16 differs by {diff}");
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}

/// The tuner ([`websd::kernels::tune`]) on an f16 device: for every kind of op, each candidate's f16
/// output agrees with burn's within the tuner's f16 tolerance (checked on the device), and is timed.
#[test]
fn the_tuner_measures_every_kind_in_f16() {
    use websd::kernels::tune::{self, AttentionShape, ConvShape, GegluShape, LinearShape, NormShape, Tuning};
    let (device, _) = f16_device();
    let errors = websd::gpu::uncaptured_errors;
    fn all_timed<S: std::fmt::Debug, P: std::fmt::Debug>(found: Option<Tuning<S, P>>) {
        let found = found.expect("read back");
        eprintln!("{:?}: {:?}, {:?}", found.shape, found.pick, found.times_ms);
        assert!(found.times_ms.iter().all(|(_, t)| t.is_some_and(|t| t > 0.0)), "{:?}", found.times_ms);
    }
    let conv = ConvShape {
        batch: 2,
        c_in: 19,
        height: 9,
        width: 7,
        c_out: 21,
        kernel: [3, 3],
        stride: 1,
        padding: [1; 4],
        f16: true,
    };
    all_timed(pollster::block_on(tune::measure_conv(conv, &device, errors)));
    let attention = AttentionShape {
        batch: 2,
        heads: 3,
        queries: 23,
        keys: 19,
        head_dim: 8,
        value_dim: 8,
        f16: true,
        upcast: true,
    };
    all_timed(pollster::block_on(websd::models::attention::measure_attention(attention, &device, errors)));
    let linear = LinearShape { rows: 37, d_in: 45, d_out: 29, f16: true };
    all_timed(pollster::block_on(tune::measure_linear(linear, &device, errors)));
    let group = NormShape::Group { batch: 2, channels: 12, pixels: 35, groups: 3, silu: true, f16: true };
    all_timed(pollster::block_on(websd::models::normalization::measure_norm(group, &device, errors)));
    let layer = NormShape::Layer { rows: 13, features: 40, f16: true };
    all_timed(pollster::block_on(websd::models::normalization::measure_norm(layer, &device, errors)));
    all_timed(pollster::block_on(tune::measure_geglu(GegluShape { rows: 9, inner: 21, f16: true }, &device, errors)));
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "wgpu validation errors");
}
