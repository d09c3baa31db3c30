//! Latent Consistency Models (Luo et al. 2023), diffusers' `LCMScheduler`: each step predicts the clean
//! sample through the consistency boundary condition, then re-noises it (except after the last step).

use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig};
use super::ddim::{add_noise_alpha, predict_x0_eps, unsupported_thresholding};
use super::tables::{alphas_cumprod, betas};
use super::{Scheduler, SchedulerError, StepIndex, check_steps, randn_like};
use crate::rng::TorchRng;

/// diffusers' `LCMScheduler`.
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    alphas_cumprod: Vec<f32>,
    train_steps: usize,
    original_steps: usize,
    timestep_scaling: f32,
    prediction: PredictionType,
    clip_sample: Option<f32>,
    timesteps: Vec<f64>,
    index: StepIndex,
}

impl LcmScheduler {
    /// Builds the scheduler from a config with `LCMScheduler`'s defaults.
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        if config.bool_or("thresholding", false)? {
            return Err(unsupported_thresholding());
        }
        let train_steps = config.usize_or("num_train_timesteps", 1000)?;
        let original_steps = config.usize_or("original_inference_steps", 50)?;
        if original_steps == 0 || original_steps > train_steps {
            return Err(SchedulerError::BadField {
                field: "original_inference_steps".into(),
                expected: "between 1 and num_train_timesteps",
            });
        }
        Ok(Self {
            alphas_cumprod: alphas_cumprod(&betas(config, "scaled_linear", 0.00085, 0.012)?),
            train_steps,
            original_steps,
            timestep_scaling: config.f64_or("timestep_scaling", 10.0)? as f32,
            prediction: config.prediction_type("epsilon")?,
            clip_sample: if config.bool_or("clip_sample", false)? {
                Some(config.f64_or("clip_sample_range", 1.0)? as f32)
            } else {
                None
            },
            timesteps: Vec::new(),
            index: StepIndex::default(),
        })
    }

    /// `(c_skip, c_out)` of the consistency boundary condition at timestep `t` (sigma_data = 0.5).
    fn boundary_scalings(&self, t: f64) -> (f32, f32) {
        let scaled = t as f32 * self.timestep_scaling;
        let sigma_data_sq = 0.25f32;
        let c_skip = sigma_data_sq / (scaled * scaled + sigma_data_sq);
        let c_out = scaled / (scaled * scaled + sigma_data_sq).sqrt();
        (c_skip, c_out)
    }
}

impl Scheduler for LcmScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        check_steps(steps, self.train_steps)?;
        if steps > self.original_steps {
            return Err(SchedulerError::TooManySteps { steps, max: self.original_steps });
        }
        let k = self.train_steps / self.original_steps;
        // The original (distillation) schedule, descending: 50k-1, ..., 2k-1, k-1.
        let origin: Vec<usize> = (1..=self.original_steps).rev().map(|i| i * k - 1).collect();
        let step = origin.len() as f64 / steps as f64;
        self.timesteps = (0..steps).map(|i| origin[(i as f64 * step).floor() as usize] as f64).collect();
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
        let len = self.timesteps.len();
        let i = self.index.checked(len)?;
        let t = self.timesteps[i];
        let prev_t = self.timesteps.get(i + 1).copied().unwrap_or(t);
        let alpha_prod_t = self.alphas_cumprod[t as usize];
        let alpha_prod_t_prev = self.alphas_cumprod[prev_t as usize];
        let (c_skip, c_out) = self.boundary_scalings(t);

        let (mut x0, _) = predict_x0_eps(self.prediction, model_output.clone(), sample.clone(), alpha_prod_t);
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        let denoised = x0 * c_out + sample * c_skip;
        let prev = if i + 1 != len {
            let noise = randn_like(rng, &model_output);
            denoised * alpha_prod_t_prev.sqrt() + noise * (1.0 - alpha_prod_t_prev).sqrt()
        } else {
            denoised
        };
        self.index.advance();
        Ok(prev)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Result<Tensor<4>, SchedulerError> {
        add_noise_alpha(&self.alphas_cumprod, &self.timesteps, original, noise, index)
    }
}
