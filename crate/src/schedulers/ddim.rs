//! DDIM (Song et al. 2020), diffusers' `DDIMScheduler`: deterministic for eta = 0.

use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::tables::{alphas_cumprod, betas, spaced_timesteps};
use super::{Scheduler, SchedulerError, StepIndex, check_steps, check_timesteps, randn_like};
use crate::rng::TorchRng;

/// diffusers' `DDIMScheduler`.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    train_steps: usize,
    steps_offset: usize,
    spacing: TimestepSpacing,
    prediction: PredictionType,
    clip_sample: Option<f32>,
    /// Noise weight: 0 is DDIM proper, 1 is DDPM-like ancestral sampling.
    pub eta: f32,
    timesteps: Vec<f64>,
    steps: usize,
    index: StepIndex,
}

impl DdimScheduler {
    /// Builds the scheduler from a config with `DDIMScheduler`'s defaults.
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        if config.bool_or("thresholding", false)? {
            return Err(unsupported_thresholding());
        }
        let alphas_cumprod = alphas_cumprod(&betas(config, "linear", 0.0001, 0.02)?);
        let set_alpha_to_one = config.bool_or("set_alpha_to_one", true)?;
        let clip = config.bool_or("clip_sample", true)?;
        Ok(Self {
            final_alpha_cumprod: if set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            train_steps: config.usize_or("num_train_timesteps", 1000)?,
            steps_offset: config.usize_or("steps_offset", 0)?,
            spacing: config.timestep_spacing("leading")?,
            prediction: config.prediction_type("epsilon")?,
            clip_sample: if clip { Some(config.f64_or("clip_sample_range", 1.0)? as f32) } else { None },
            eta: 0.0,
            timesteps: Vec::new(),
            steps: 0,
            index: StepIndex::default(),
        })
    }
}

pub(crate) fn unsupported_thresholding() -> SchedulerError {
    SchedulerError::Unsupported {
        field: "thresholding",
        value: "true".into(),
        hint: " (dynamic thresholding is for pixel-space models)".into(),
    }
}

/// `(sample - sqrt(1 - a) * eps) / sqrt(a)` and its siblings: the clean sample and the noise a
/// prediction implies, for the alpha-based schedulers (DDPM, DDIM, LCM). Scalars in f32 as in torch.
pub(crate) fn predict_x0_eps(
    prediction: PredictionType,
    model_output: Tensor<4>,
    sample: Tensor<4>,
    alpha_prod_t: f32,
) -> (Tensor<4>, Tensor<4>) {
    let beta_prod_t = 1.0 - alpha_prod_t;
    let (sqrt_a, sqrt_b) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
    match prediction {
        PredictionType::Epsilon => {
            let x0 = (sample - model_output.clone() * sqrt_b) / sqrt_a;
            (x0, model_output)
        }
        PredictionType::Sample => {
            let eps = (sample - model_output.clone() * sqrt_a) / sqrt_b;
            (model_output, eps)
        }
        PredictionType::VPrediction => {
            let x0 = sample.clone() * sqrt_a - model_output.clone() * sqrt_b;
            let eps = model_output * sqrt_a + sample * sqrt_b;
            (x0, eps)
        }
    }
}

impl Scheduler for DdimScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        check_steps(steps, self.train_steps)?;
        self.steps = steps;
        let timesteps = spaced_timesteps(self.spacing, self.train_steps, steps, self.steps_offset);
        check_timesteps(timesteps.iter().map(|&t| t as i64), steps, self.train_steps)?;
        self.timesteps = timesteps;
        self.index.reset();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn set_begin_index(&mut self, index: usize) {
        self.index.set_begin(index);
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        rng: &mut TorchRng,
    ) -> Result<Tensor<4>, SchedulerError> {
        let i = self.index.checked(self.timesteps.len())?;
        let t = self.timesteps[i] as i64;
        let prev_t = t - (self.train_steps / self.steps) as i64;
        let alpha_prod_t = self.alphas_cumprod[t as usize];
        let alpha_prod_t_prev =
            if prev_t >= 0 { self.alphas_cumprod[prev_t as usize] } else { self.final_alpha_cumprod };
        let beta_prod_t = 1.0 - alpha_prod_t;

        let (mut x0, eps) = predict_x0_eps(self.prediction, model_output, sample, alpha_prod_t);
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        // The posterior variance, as diffusers' `_get_variance`.
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = beta_prod_t_prev / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();

        let direction = eps.clone() * (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let mut prev = x0 * alpha_prod_t_prev.sqrt() + direction;
        if self.eta > 0.0 {
            prev = prev + randn_like(rng, &eps) * std_dev_t;
        }
        self.index.advance();
        Ok(prev)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Result<Tensor<4>, SchedulerError> {
        add_noise_alpha(&self.alphas_cumprod, &self.timesteps, original, noise, index)
    }
}

/// `sqrt(a_t) * x0 + sqrt(1 - a_t) * noise` at `timesteps[index]`: diffusers' `add_noise` for the
/// alpha-based schedulers.
pub(crate) fn add_noise_alpha(
    alphas_cumprod: &[f32],
    timesteps: &[f64],
    original: Tensor<4>,
    noise: Tensor<4>,
    index: usize,
) -> Result<Tensor<4>, SchedulerError> {
    let t = *timesteps.get(index).ok_or(SchedulerError::OutOfSteps { index, len: timesteps.len() })?;
    let a = alphas_cumprod[t as usize];
    Ok(original * a.sqrt() + noise * (1.0 - a).sqrt())
}
