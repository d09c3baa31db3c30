//! img2img's initial latents from the seed: the VAE encoder's sample (noise from the generator) scaled
//! by `scaling_factor`, then noised to the first timestep kept by `strength` with the next draw, exactly
//! as diffusers' `StableDiffusionImg2ImgPipeline.prepare_latents` does.

use crate::common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{Run, max_diff};
use websd::config::{AutoencoderKLConfig, parse};
use websd::models::autoencoder_kl::VaeEncoder;
use websd::rng::TorchRng;
use websd::schedulers::{self, SchedulerKind};

#[test]
fn img2img_initial_latents_match_diffusers() {
    let device = Device::flex();
    let vae_dir = common::fixtures_dir().join("tiny-sd/vae");
    let config: AutoencoderKLConfig =
        parse("vae/config.json", &std::fs::read_to_string(vae_dir.join("config.json")).unwrap()).unwrap();
    let file = std::fs::File::open(vae_dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let encoder = VaeEncoder::load(&config, file, &device).unwrap();

    let run = Run::load("img2img_ddim");
    // [H, W, 3] in [0, 1] -> [1, 3, H, W] in [-1, 1], as diffusers' VaeImageProcessor.
    let (shape, pixels) = run.f32("init_image");
    let image = Tensor::<3>::from_data(TensorData::new(pixels, [shape[0], shape[1], 3]), &device);
    let image = image.permute([2, 0, 1]).unsqueeze::<4>() * 2.0 - 1.0;

    let mut rng = TorchRng::new(run.meta("seed").unwrap().parse().unwrap());
    let dist = encoder.forward(image);
    let noise = schedulers::randn(&mut rng, dist.mean.dims(), &device);
    let image_latents = dist.sample(noise) * config.scaling_factor as f32;

    let mut scheduler = schedulers::build(SchedulerKind::Ddim, &common::ddim_scheduler_config()).unwrap();
    scheduler.set_timesteps(8).unwrap();
    let t_start = 8 - (8.0 * 0.75) as usize;
    let noise = schedulers::randn(&mut rng, image_latents.dims(), &device);
    let initial = scheduler.add_noise(image_latents, noise, t_start).unwrap();

    let diff = max_diff(initial, &run.f32("initial_latents").1);
    eprintln!("img2img initial latents: max abs diff {diff:e}");
    assert!(diff <= 1e-6, "img2img initial latents differ by {diff}");
}
