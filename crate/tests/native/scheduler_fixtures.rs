//! Every scheduler against diffusers' recorded trajectories: the timesteps, the initial latents from
//! the seed, the scaled UNet inputs, and each step fed the recorded UNet outputs (Flex CPU, f32).

use crate::common;

use burn::tensor::{Device, Tensor};
use common::{Run, max_diff};
use websd::rng::TorchRng;
use websd::schedulers::{self, Scheduler};

/// classifier-free guidance as the pipelines apply it: `uncond + g * (text - uncond)`.
fn guided(unet_out: Tensor<4>, guidance: f32) -> Tensor<4> {
    let uncond = unet_out.clone().narrow(0, 0, 1);
    let text = unet_out.narrow(0, 1, 1);
    uncond.clone() + (text - uncond) * guidance
}

fn check_run(name: &str, tolerance: f32) {
    let device = Device::flex();
    let run = Run::load(name);
    let (config, kind) = common::run_scheduler(&run);
    let mut scheduler: Box<dyn Scheduler> = schedulers::build(kind, &config).unwrap();
    let steps: usize = run.meta("steps").unwrap().parse().unwrap();
    let seed: u64 = run.meta("seed").unwrap().parse().unwrap();
    let strength: f64 = run.meta("strength").map_or(1.0, |s| s.parse().unwrap());
    let guidance = 7.5f32;

    // Timesteps, truncated by strength as the img2img/inpaint pipelines do.
    scheduler.set_timesteps(steps).unwrap();
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    let t_start = (steps - init_timestep) * scheduler.order();
    let (_, expected_timesteps) = run.f32("timesteps");
    let timesteps: Vec<f32> = scheduler.timesteps()[t_start..].iter().map(|&t| t as f32).collect();
    assert_eq!(timesteps, expected_timesteps, "{name}: timesteps");
    scheduler.set_begin_index(t_start);

    // Initial latents from the seed (txt2img, and inpainting at strength 1: noise * init_noise_sigma).
    let initial = run.tensor4("initial_latents", &device);
    let mut rng = TorchRng::new(seed);
    if strength >= 1.0 {
        let noise = schedulers::randn(&mut rng, initial.dims(), &device);
        let diff = max_diff(noise * scheduler.init_noise_sigma(), &run.f32("initial_latents").1);
        assert!(diff <= 1e-6, "{name}: initial latents differ by {diff}");
        // Inpainting then encodes the masked image, drawing VAE noise.
        for draw in run.names_with_prefix("randn_").iter().skip(1).filter(|d| d.contains("vae")) {
            rng.randn(run.f32(draw).1.len());
        }
    } else {
        // img2img: VAE sampling noise, then the noise added to the image latents.
        for draw in run.names_with_prefix("randn_") {
            rng.randn(run.f32(&draw).1.len());
        }
    }

    let calls = run.names_with_prefix("unet_out_").len();
    assert_eq!(calls, scheduler.timesteps().len() - t_start, "{name}: one UNet call per timestep");
    let mut worst = 0.0f32;
    for i in 0..calls {
        let sample =
            if i == 0 { initial.clone() } else { run.tensor4(&format!("latents_after_step_{:02}", i - 1), &device) };
        // The UNet saw [negative, positive] copies of the scaled latents (plus mask channels when inpainting).
        let scaled = scheduler.scale_model_input(sample.clone()).unwrap();
        let recorded_in = run.tensor4(&format!("unet_in_sample_{i:02}"), &device).narrow(0, 0, 1).narrow(1, 0, 4);
        let in_diff = max_diff(scaled, &recorded_in.into_data().try_to_vec::<f32>().unwrap());
        assert!(in_diff <= 1e-6, "{name} step {i}: scaled model input differs by {in_diff}");

        let noise_pred = guided(run.tensor4(&format!("unet_out_{i:02}"), &device), guidance);
        let prev = scheduler.step(noise_pred, sample, &mut rng).unwrap();
        let diff = max_diff(prev, &run.f32(&format!("latents_after_step_{i:02}")).1);
        assert!(diff <= tolerance, "{name} step {i}: latents differ by {diff} (tolerance {tolerance})");
        worst = worst.max(diff);
    }
    eprintln!("{name}: {calls} steps, worst max abs diff {worst:e}");
}

#[test]
fn ddim_txt2img() {
    check_run("txt2img_ddim", 1e-5);
}

#[test]
fn ddim_txt2img_repeat() {
    check_run("txt2img_ddim_repeat", 1e-5);
}

#[test]
fn euler_txt2img() {
    check_run("txt2img_euler", 1e-5);
}

#[test]
fn lcm_txt2img_draws_fresh_noise_each_step() {
    check_run("txt2img_lcm", 1e-5);
}

#[test]
fn pndm_txt2img_plms() {
    check_run("txt2img_pndm", 1e-4);
}

#[test]
fn dpmpp_2m_txt2img() {
    check_run("txt2img_dpmpp2m", 1e-4);
}

#[test]
fn ddim_img2img_starts_at_strength() {
    check_run("img2img_ddim", 1e-5);
}

#[test]
fn ddim_inpaint_nine_channel_unet() {
    check_run("inpaint_ddim", 1e-5);
}

#[test]
fn every_run_is_covered() {
    let covered = [
        "img2img_ddim",
        "inpaint_ddim",
        "txt2img_ddim",
        "txt2img_ddim_repeat",
        "txt2img_dpmpp2m",
        "txt2img_euler",
        "txt2img_lcm",
        "txt2img_pndm",
    ];
    assert_eq!(common::run_names(), covered);
}
