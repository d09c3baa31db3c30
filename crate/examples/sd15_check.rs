//! The full-size check: SD 1.5's real architecture (CLIP-L, the 860M-parameter U-Net with 4 blocks up to
//! 1280 channels, the 84M-parameter VAE) against diffusers, on the Flex CPU device in f32.
//!
//! Needs the random-weight SD1.5-shaped model that `../shared/oracle/step4_fullsize.py` regenerates
//! deterministically (2.1 GB fp16, real-repo key names) and the reference tensors diffusers recorded
//! from it (`sd15/sd15-random-io.safetensors`):
//!
//! `cargo run --release --example sd15_check -- <sd15-random dir> <sd15-random-io.safetensors>`
//!
//! Prints the max abs diffs (the bound is 1e-3), the U-Net load's peak memory and the U-Net's
//! batch-2 32x32 forward time (to compare with diffusers' on the same machine).

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use websd::config::{AutoencoderKLConfig, UNet2DConditionConfig, parse};
use websd::models::autoencoder_kl::{DEFAULT_BAND_BYTES, VaeDecoder, VaeEncoder};
use websd::models::clip::ClipTextConfig;
use websd::models::unet_2d_condition::UNet2DConditionModel;
use websd::tokenizer::ClipTokenizer;
use websd::weights::{SafetensorsReader, Variant, component_weights};

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

struct Reference(SafetensorsReader<File>);

impl Reference {
    fn tensor<const D: usize>(&mut self, name: &str, device: &Device) -> Tensor<D> {
        let (shape, values) = self.0.read_f32(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

fn config<T: serde::de::DeserializeOwned>(dir: &Path, file: &str) -> T {
    parse(file, &std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, io) = (Path::new(&args[1]), Path::new(&args[2]));
    let device = Device::flex();
    let mut reference = Reference(SafetensorsReader::new(File::open(io).unwrap()).unwrap());
    let bound = 1e-3;
    let mut failed = false;
    let mut check = |what: &str, diff: f32| {
        println!("{what}: max abs diff {diff:e}");
        failed |= diff > bound || diff.is_nan();
    };

    // The U-Net first, so the peak resident memory of its load is measured on a fresh process.
    let unet_config: UNet2DConditionConfig = config(dir, "unet/config.json");
    let unet_file = component_weights(&dir.join("unet"), Some(Variant::Fp16)).unwrap();
    let file_mib = std::fs::metadata(&unet_file).unwrap().len() as f64 / (1 << 20) as f64;
    let before = rss_mib("VmRSS:");
    let t = Instant::now();
    let unet = UNet2DConditionModel::load(&unet_config, File::open(&unet_file).unwrap(), &device).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let (after, peak) = (rss_mib("VmRSS:"), rss_mib("VmHWM:"));
    let f32_mib = file_mib * 2.0;
    println!(
        "unet load: {load_s:.1} s; fp16 file {file_mib:.0} MiB = {f32_mib:.0} MiB as f32; RSS before {before:.0} MiB, \
         after {after:.0} MiB, peak {peak:.0} MiB: peak - before = {:.0} MiB = {:.1}% over the f32 weights",
        peak - before,
        ((peak - before) / f32_mib - 1.0) * 100.0
    );

    let sample = reference.tensor::<4>("unet_in_sample", &device);
    let context = reference.tensor::<3>("unet_in_encoder_hidden_states", &device);
    let t = Instant::now();
    let out = unet.forward(sample, 981.0, context.clone(), None);
    let expected = reference.tensor::<4>("unet_out", &device);
    check(&format!("unet [2,4,16,16] t=981 ({:.2} s)", t.elapsed().as_secs_f64()), max_diff(out, expected));

    // Timing: batch 2 (classifier-free guidance), 32x32 latents (256 px), as diffusers' benchmark.
    let x32 = Tensor::<4>::random([2, 4, 32, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let run = || {
        let t = Instant::now();
        let _ = unet.forward(x32.clone(), 500.0, context.clone(), None).into_data();
        t.elapsed().as_secs_f64()
    };
    let warm = run();
    let reps: Vec<f64> = (0..3).map(|_| run()).collect();
    println!(
        "unet batch 2 32x32 on Flex: first {warm:.2} s, reps {reps:.2?} s, min {:.2} s",
        reps.iter().cloned().fold(f64::MAX, f64::min)
    );
    drop(unet);

    // CLIP-L text embeddings.
    let clip_config =
        ClipTextConfig::from_json(&std::fs::read_to_string(dir.join("text_encoder/config.json")).unwrap()).unwrap();
    let clip_file = component_weights(&dir.join("text_encoder"), Some(Variant::Fp16)).unwrap();
    let clip = clip_config.load(File::open(clip_file).unwrap(), &device).unwrap();
    let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer")).unwrap();
    for (text, name) in
        [("a photo of an astronaut riding a horse", "prompt_embeds"), ("blurry", "negative_prompt_embeds")]
    {
        let ids: Vec<i64> = tokenizer.encode(text).unwrap().ids.iter().map(|&i| i as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 77]), &device);
        let embeds = clip.forward(ids).last_hidden_state;
        check(&format!("text encoder {name}"), max_diff(embeds, reference.tensor::<3>(name, &device)));
    }

    // VAE decode and encode.
    let vae_config: AutoencoderKLConfig = config(dir, "vae/config.json");
    let vae_file = component_weights(&dir.join("vae"), Some(Variant::Fp16)).unwrap();
    let decoder = VaeDecoder::load(&vae_config, File::open(&vae_file).unwrap(), &device).unwrap();
    let latents = reference.tensor::<4>("vae_in_latents", &device) / vae_config.scaling_factor as f32;
    let t = Instant::now();
    let decoded = decoder.decode(latents, DEFAULT_BAND_BYTES);
    let decode_s = t.elapsed().as_secs_f64();
    check(
        &format!("vae decode 16x16 -> 128 px ({decode_s:.2} s)"),
        max_diff(decoded, reference.tensor::<4>("vae_decoded", &device)),
    );
    let encoder = VaeEncoder::load(&vae_config, File::open(&vae_file).unwrap(), &device).unwrap();
    let mean = encoder.forward(reference.tensor::<4>("vae_enc_in_image", &device)).mean;
    check("vae encode mean 128 px", max_diff(mean, reference.tensor::<4>("vae_enc_mean", &device)));

    // 512 px decode: untiled vs the default bands (the full-size VAE is where bands matter).
    let z = Tensor::<4>::random([1, 4, 64, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let rows = decoder.band_rows(64, 64, DEFAULT_BAND_BYTES);
    let t = Instant::now();
    let banded = decoder.decode(z.clone(), DEFAULT_BAND_BYTES);
    let banded_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let untiled = decoder.decode_untiled(z);
    let untiled_s = t.elapsed().as_secs_f64();
    println!(
        "vae 512 px decode: {} bands of {rows} latent rows {banded_s:.1} s, untiled {untiled_s:.1} s, max abs diff {:e}",
        64usize.div_ceil(rows),
        max_diff(banded, untiled)
    );
    // 512 px encode (img2img source): bands vs untiled.
    let image = Tensor::<4>::random([1, 3, 512, 512], burn::tensor::Distribution::Uniform(-1.0, 1.0), &device);
    let rows = encoder.band_rows(512, 512, DEFAULT_BAND_BYTES);
    let t = Instant::now();
    let banded = encoder.encode(image.clone(), DEFAULT_BAND_BYTES).mean;
    let banded_s = t.elapsed().as_secs_f64();
    let untiled = encoder.encode_untiled(image).mean;
    println!(
        "vae 512 px encode: {} bands of {rows} rows {banded_s:.1} s, mean max abs diff vs untiled {:e}",
        512usize.div_ceil(rows),
        max_diff(banded, untiled)
    );
    if failed {
        eprintln!("FAILED: a difference exceeds {bound}");
        std::process::exit(1);
    }
    println!("all within {bound}");
}
