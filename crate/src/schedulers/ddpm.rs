//! DDPM (Ho et al. 2020), diffusers' `DDPMScheduler`: ancestral sampling with fresh noise every step.

use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::ddim::{add_noise_alpha, predict_x0_eps, unsupported_thresholding};
use super::tables::{alphas_cumprod, betas, spaced_timesteps};
use super::{Scheduler, SchedulerError, StepIndex, check_steps, check_timesteps, randn_like};
use crate::rng::TorchRng;

/// The variance types of diffusers' DDPM that apply to a UNet predicting only the noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
}

/// diffusers' `DDPMScheduler`.
#[derive(Debug, Clone)]
pub struct DdpmScheduler {
    alphas_cumprod: Vec<f32>,
    train_steps: usize,
    steps_offset: usize,
    spacing: TimestepSpacing,
    prediction: PredictionType,
    variance: VarianceType,
    clip_sample: Option<f32>,
    timesteps: Vec<f64>,
    index: StepIndex,
}

impl DdpmScheduler {
    /// Builds the scheduler from a config with `DDPMScheduler`'s defaults.
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        if config.bool_or("thresholding", false)? {
            return Err(unsupported_thresholding());
        }
        let variance = match config.str_or("variance_type", "fixed_small")? {
            "fixed_small" => VarianceType::FixedSmall,
            "fixed_small_log" => VarianceType::FixedSmallLog,
            "fixed_large" => VarianceType::FixedLarge,
            other => {
                return Err(SchedulerError::Unsupported {
                    field: "variance_type",
                    value: other.to_string(),
                    hint: " (learned variances need a UNet with twice the output channels)".into(),
                });
            }
        };
        Ok(Self {
            alphas_cumprod: alphas_cumprod(&betas(config, "linear", 0.0001, 0.02)?),
            train_steps: config.usize_or("num_train_timesteps", 1000)?,
            steps_offset: config.usize_or("steps_offset", 0)?,
            spacing: config.timestep_spacing("leading")?,
            prediction: config.prediction_type("epsilon")?,
            variance,
            clip_sample: if config.bool_or("clip_sample", true)? {
                Some(config.f64_or("clip_sample_range", 1.0)? as f32)
            } else {
                None
            },
            timesteps: Vec::new(),
            index: StepIndex::default(),
        })
    }

    /// The step's `(alpha_prod_t, alpha_prod_t_prev)`; the previous timestep is the next entry of the
    /// schedule (diffusers' `previous_timestep`), or "before the start" (alpha 1) after the last.
    fn alphas(&self, i: usize) -> (usize, f32, f32) {
        let t = self.timesteps[i] as usize;
        let prev = self.timesteps.get(i + 1).map_or(1.0, |&p| self.alphas_cumprod[p as usize]);
        (t, self.alphas_cumprod[t], prev)
    }
}

impl Scheduler for DdpmScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        check_steps(steps, self.train_steps)?;
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
        let (t, alpha_prod_t, alpha_prod_t_prev) = self.alphas(i);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        let (mut x0, _) = predict_x0_eps(self.prediction, model_output.clone(), sample.clone(), alpha_prod_t);
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        let x0_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t;
        let sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let mut prev = x0 * x0_coeff + sample * sample_coeff;

        if t > 0 {
            let noise = randn_like(rng, &model_output);
            // diffusers' `_get_variance`, clamped away from zero.
            let variance = ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
            let scale = match self.variance {
                VarianceType::FixedSmall => variance.sqrt(),
                VarianceType::FixedSmallLog => (0.5 * variance.ln()).exp(),
                VarianceType::FixedLarge => current_beta_t.sqrt(),
            };
            prev = prev + noise * scale;
        }
        self.index.advance();
        Ok(prev)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Result<Tensor<4>, SchedulerError> {
        add_noise_alpha(&self.alphas_cumprod, &self.timesteps, original, noise, index)
    }
}
