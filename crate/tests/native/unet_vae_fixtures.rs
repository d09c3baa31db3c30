//! The U-Net and the VAE decoder against diffusers: every recorded U-Net call of every run, and the
//! final decode, on the Flex CPU device in f32.

use crate::common;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use common::{Run, fixtures_dir, max_diff, unet};
use websd::config::{AutoencoderKLConfig, parse};
use websd::models::autoencoder_kl::{DEFAULT_BAND_BYTES, VaeDecoder};
use websd::models::unet_2d_condition::UNet2DConditionModel;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vae_config(model: &str) -> AutoencoderKLConfig {
    parse("vae/config.json", &read(&fixtures_dir().join(model).join("vae/config.json"))).unwrap()
}

fn decoder(model: &str, file: &str, device: &Device) -> VaeDecoder {
    let file = std::fs::File::open(fixtures_dir().join(model).join("vae").join(file)).unwrap();
    VaeDecoder::load(&vae_config(model), file, device).unwrap()
}

/// Replays every U-Net call recorded in `run` and returns the largest difference.
fn replay_unet(run: &Run, unet: &UNet2DConditionModel, device: &Device) -> f32 {
    let (shape, context) = run.f32("unet_in_encoder_hidden_states");
    let context = Tensor::<3>::from_data(TensorData::new(context, [shape[0], shape[1], shape[2]]), device);
    let calls = run.names_with_prefix("unet_out_");
    assert!(!calls.is_empty(), "{}: no recorded U-Net calls", run.name);
    let mut worst = 0f32;
    for out_name in calls {
        let n = out_name.trim_start_matches("unet_out_");
        let sample = run.tensor4(&format!("unet_in_sample_{n}"), device);
        let (_, t) = run.f32(&format!("unet_in_timestep_{n}"));
        let predicted = unet.forward(sample, t[0], context.clone(), None);
        let diff = max_diff(predicted, &run.f32(&out_name).1);
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn tiny_unet_matches_every_recorded_call() {
    let device = Device::flex();
    let fp32 = unet("tiny-sd", "diffusion_pytorch_model.safetensors", &device);
    let fp16 = unet("tiny-sd", "diffusion_pytorch_model.fp16.safetensors", &device);
    for name in ["txt2img_ddim", "txt2img_euler", "txt2img_dpmpp2m", "txt2img_lcm", "txt2img_pndm", "img2img_ddim"] {
        let run = Run::load(name);
        let diff = replay_unet(&run, &fp32, &device);
        eprintln!("{name}: U-Net fp32 files, max abs diff {diff:e}");
        assert!(diff <= 1e-4, "{name}: U-Net (fp32 files) differs by {diff}");
        let diff = replay_unet(&run, &fp16, &device);
        eprintln!("{name}: U-Net fp16 files in f32, max abs diff {diff:e}");
        assert!(diff <= 1e-3, "{name}: U-Net (fp16 files) differs by {diff}");
    }
}

/// The memory plan's micro-batching: a U-Net batch run in calls of fewer samples is the one-call result
/// (samples are independent), including an uneven last call.
#[test]
fn unet_in_calls_equals_one_call() {
    use burn::tensor::Distribution;
    let device = Device::flex();
    let unet = unet("tiny-sd", "diffusion_pytorch_model.safetensors", &device);
    let sample = Tensor::<4>::random([5, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let context = Tensor::<3>::random([5, 77, 32], Distribution::Normal(0.0, 1.0), &device);
    let whole = unet.forward(sample.clone(), 501.0, context.clone(), None);
    let expected: Vec<f32> = whole.into_data().try_to_vec::<f32>().unwrap();
    for samples in [1, 2, 3] {
        let split = unet.forward_in_calls(sample.clone(), 501.0, context.clone(), None, samples);
        assert_eq!(split.dims(), [5, 4, 8, 8]);
        let diff = max_diff(split, &expected);
        assert!(diff <= 1e-5, "{samples} samples per call differ by {diff}");
    }
}

#[test]
fn inpainting_unet_takes_nine_channels() {
    let device = Device::flex();
    let unet = unet("tiny-sd-inpaint", "diffusion_pytorch_model.safetensors", &device);
    let run = Run::load("inpaint_ddim");
    assert_eq!(run.f32("unet_in_sample_00").0[1], 9);
    let diff = replay_unet(&run, &unet, &device);
    eprintln!("inpaint_ddim: 9-channel U-Net, max abs diff {diff:e}");
    assert!(diff <= 1e-4, "inpainting U-Net differs by {diff}");
}

/// The decoded image of a run: `vae_decoded_raw` where recorded, else the final `image` (= clamp(raw / 2
/// + 0.5), `[1, H, W, 3]`), to which the decode is converted the same way.
fn decode_diff(run: &Run, decoded: Tensor<4>) -> f32 {
    if run.has("vae_decoded_raw") {
        max_diff(decoded, &run.f32("vae_decoded_raw").1)
    } else {
        max_diff((decoded / 2.0 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 1]), &run.f32("image").1)
    }
}

#[test]
fn vae_decode_matches_every_run() {
    let device = Device::flex();
    let config = vae_config("tiny-sd");
    let runs = [
        "txt2img_ddim",
        "txt2img_euler",
        "txt2img_dpmpp2m",
        "txt2img_lcm",
        "txt2img_pndm",
        "img2img_ddim",
        "inpaint_ddim",
    ];
    // diffusers recorded the runs with the fp32 files; the fp16 files (the same weights rounded to f16)
    // are held to the U-Net's fp16 tolerance.
    for (file, tolerance) in
        [("diffusion_pytorch_model.safetensors", 1e-4), ("diffusion_pytorch_model.fp16.safetensors", 1e-3)]
    {
        let vae = decoder("tiny-sd", file, &device);
        for name in runs {
            let run = Run::load(name);
            let latents = run.tensor4("final_latents", &device) / config.scaling_factor as f32;
            let diff = decode_diff(&run, vae.decode(latents, DEFAULT_BAND_BYTES));
            eprintln!("{name}: VAE decode ({file}), max abs diff {diff:e}");
            assert!(diff <= tolerance, "{name}: VAE decode ({file}) differs by {diff}");
        }
    }
}

#[test]
fn legacy_key_names_decode_identically() {
    let device = Device::flex();
    let new = decoder("tiny-sd", "diffusion_pytorch_model.fp16.safetensors", &device);
    let legacy = decoder("tiny-sd-legacykeys", "diffusion_pytorch_model.fp16.safetensors", &device);
    let latents = Run::load("txt2img_ddim").tensor4("final_latents", &device);
    let a: Vec<f32> = new.decode(latents.clone(), DEFAULT_BAND_BYTES).into_data().try_to_vec::<f32>().unwrap();
    let diff = max_diff(legacy.decode(latents, DEFAULT_BAND_BYTES), &a);
    assert_eq!(diff, 0.0, "the two key namings must give the same decoder");
}

/// Row bands must reproduce the untiled decode: a 256 px image (128x128 latents for the tiny VAE, whose
/// scale factor is 2) decoded in bands of 8 latent rows.
#[test]
fn banded_decode_equals_untiled_at_256px() {
    let device = Device::flex();
    let vae = decoder("tiny-sd", "diffusion_pytorch_model.safetensors", &device);
    // Deterministic latents with structure at all scales (not constant across bands).
    let (h, w) = (128, 128);
    let values: Vec<f32> = (0..4 * h * w)
        .map(|i| {
            let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
            ((x as f32 * 0.37 + c as f32).sin() + (y as f32 * 0.23).cos() * 0.8 + ((x * y + c) % 7) as f32 * 0.1) * 2.0
        })
        .collect();
    let latents = Tensor::<4>::from_data(TensorData::new(values, [1, 4, h, w]), &device);
    let untiled: Vec<f32> = vae.decode_untiled(latents.clone()).into_data().try_to_vec::<f32>().unwrap();

    // Budget for 8 latent rows per band: the widest stage is 64 channels at 2x (plus halo rows).
    let budget = 64 * (8 * 2 + 2) * (w * 2) * 4;
    assert_eq!(vae.band_rows(h, w, budget), 8);
    let banded = vae.decode(latents, budget);
    assert_eq!(banded.dims(), [1, 3, 256, 256]);
    let diff = max_diff(banded, &untiled);
    eprintln!("256 px decode, 16 bands vs untiled: max abs diff {diff:e}");
    assert!(diff <= 1e-5, "banded decode differs from the untiled one by {diff}");
}

/// The encoder's row bands (with stride-2 convolutions) must reproduce the untiled encode: a 256 px
/// image in bands of 16 rows.
#[test]
fn banded_encode_equals_untiled_at_256px() {
    use websd::models::autoencoder_kl::VaeEncoder;
    let device = Device::flex();
    let file = std::fs::File::open(fixtures_dir().join("tiny-sd/vae/diffusion_pytorch_model.safetensors")).unwrap();
    let encoder = VaeEncoder::load(&vae_config("tiny-sd"), file, &device).unwrap();
    let (h, w) = (256, 256);
    let values: Vec<f32> = (0..3 * h * w)
        .map(|i| {
            let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
            ((x as f32 * 0.11 + c as f32).sin() * (y as f32 * 0.07).cos() + ((x + 3 * y) % 5) as f32 * 0.1 - 0.2)
                .clamp(-1.0, 1.0)
        })
        .collect();
    let image = Tensor::<4>::from_data(TensorData::new(values, [1, 3, h, w]), &device);
    let untiled = encoder.encode_untiled(image.clone());
    // The widest full-resolution stage is 32 channels: 16 rows (+ halo) per band.
    let budget = 32 * (16 + 2) * (w + 2) * 4;
    assert_eq!(encoder.band_rows(h, w, budget), 16);
    let banded = encoder.encode(image, budget);
    let mean = max_diff(banded.mean, &untiled.mean.into_data().try_to_vec::<f32>().unwrap());
    let std = max_diff(banded.std, &untiled.std.into_data().try_to_vec::<f32>().unwrap());
    eprintln!("256 px encode, 16 bands vs untiled: mean {mean:e}, std {std:e}");
    assert!(mean <= 1e-5 && std <= 1e-5, "banded encode differs: mean {mean}, std {std}");
}

/// A latent size the U-Net's downsampling does not divide (17 -> 9 -> back to 17): the up block
/// upsamples to the skip connection's size, as diffusers' `forward_upsample_size` does.
#[test]
fn odd_latent_sizes_keep_their_shape() {
    let device = Device::flex();
    let unet = unet("tiny-sd", "diffusion_pytorch_model.safetensors", &device);
    let sample = Tensor::<4>::ones([2, 4, 17, 13], &device);
    let context = Tensor::<3>::zeros([2, 77, 32], &device);
    let out = unet.forward(sample, 500.0, context, None);
    assert_eq!(out.dims(), [2, 4, 17, 13]);
    let values: Vec<f32> = out.into_data().try_to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
}
