//! Euler (Karras et al. 2022, Algorithm 2 without churn), diffusers' `EulerDiscreteScheduler`.

use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::tables::{alphas_cumprod, betas, karras_sigmas, np_interp, sigma_timesteps, sigma_to_t, sigmas_f32};
use super::{Scheduler, SchedulerError, StepIndex, check_steps};
use crate::rng::TorchRng;

/// The sigma tables shared by the Euler schedulers.
#[derive(Debug, Clone)]
pub(crate) struct SigmaSchedule {
    /// `sqrt((1 - a) / a)` per training timestep (torch f32).
    pub train_sigmas: Vec<f32>,
    pub train_steps: usize,
    pub steps_offset: usize,
    pub spacing: TimestepSpacing,
    /// Inference sigmas, one per timestep plus the final one (f32).
    pub sigmas: Vec<f32>,
    pub timesteps: Vec<f64>,
    pub index: StepIndex,
}

impl SigmaSchedule {
    pub(crate) fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        let alphas_cumprod = alphas_cumprod(&betas(config, "linear", 0.0001, 0.02)?);
        Ok(Self {
            train_sigmas: sigmas_f32(&alphas_cumprod),
            train_steps: config.usize_or("num_train_timesteps", 1000)?,
            steps_offset: config.usize_or("steps_offset", 0)?,
            spacing: config.timestep_spacing("linspace")?,
            sigmas: Vec::new(),
            timesteps: Vec::new(),
            index: StepIndex::default(),
        })
    }

    /// Timesteps and sigmas interpolated from the training sigmas (`interpolation_type: linear`), in
    /// float64 like diffusers' numpy code; `karras` replaces them with the Karras ramp.
    pub(crate) fn set(&mut self, steps: usize, karras: bool, final_sigma: f32) -> Result<(), SchedulerError> {
        check_steps(steps, self.train_steps)?;
        let mut timesteps = sigma_timesteps(self.spacing, self.train_steps, steps, self.steps_offset);
        let fp: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| np_interp(t, &fp)).collect();
        if karras {
            let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
            sigmas = karras_sigmas(min, max, steps);
            // numpy: log of the float32 sigma table stays float32.
            let log_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s.ln() as f64).collect();
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64).collect();
        }
        self.sigmas = sigmas.into_iter().map(|s| s as f32).chain([final_sigma]).collect();
        self.timesteps = timesteps;
        self.index.reset();
        Ok(())
    }

    /// diffusers' `init_noise_sigma`: the largest sigma, or `sqrt(max^2 + 1)` for leading spacing.
    pub(crate) fn init_noise_sigma(&self) -> f32 {
        let max = self.sigmas.iter().copied().fold(0.0f32, f32::max);
        match self.spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    /// `sample / sqrt(sigma^2 + 1)`.
    pub(crate) fn scale(&self, sample: Tensor<4>) -> Result<Tensor<4>, SchedulerError> {
        let sigma = self.sigmas[self.index.checked(self.timesteps.len())?];
        Ok(sample / (sigma * sigma + 1.0).sqrt())
    }

    /// `original + noise * sigma` at `timesteps()[index]`.
    pub(crate) fn add_noise(
        &self,
        original: Tensor<4>,
        noise: Tensor<4>,
        index: usize,
    ) -> Result<Tensor<4>, SchedulerError> {
        let len = self.timesteps.len();
        let sigma = *self.sigmas.get(index).filter(|_| index < len).ok_or(SchedulerError::OutOfSteps { index, len })?;
        Ok(original + noise * sigma)
    }
}

/// The clean sample implied by the UNet output at noise level `sigma` (epsilon or v-prediction).
pub(crate) fn sigma_x0(
    prediction: PredictionType,
    model_output: Tensor<4>,
    sample: Tensor<4>,
    sigma: f32,
) -> Tensor<4> {
    match prediction {
        PredictionType::Epsilon => sample - model_output * sigma,
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            model_output * (-sigma / s2.sqrt()) + sample / s2
        }
        PredictionType::Sample => model_output,
    }
}

/// diffusers' `EulerDiscreteScheduler` (`s_churn = 0`, the pipelines' default: deterministic).
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    pub(crate) schedule: SigmaSchedule,
    prediction: PredictionType,
    karras: bool,
    final_sigma_min: bool,
}

impl EulerDiscreteScheduler {
    /// Builds the scheduler from a config with `EulerDiscreteScheduler`'s defaults.
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        check_sigma_options(config, "EulerDiscreteScheduler")?;
        let final_sigma_min = match config.str_or("final_sigmas_type", "zero")? {
            "zero" => false,
            "sigma_min" => true,
            other => {
                return Err(SchedulerError::Unsupported {
                    field: "final_sigmas_type",
                    value: other.into(),
                    hint: String::new(),
                });
            }
        };
        Ok(Self {
            schedule: SigmaSchedule::new(config)?,
            prediction: config.prediction_type("epsilon")?,
            karras: config.bool_or("use_karras_sigmas", false)?,
            final_sigma_min,
        })
    }
}

/// Options of the sigma schedulers we do not implement, refused rather than silently ignored.
pub(crate) fn check_sigma_options(config: &SchedulerConfig, scheduler: &'static str) -> Result<(), SchedulerError> {
    for key in ["use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"] {
        if config.bool_or(key, false)? {
            return Err(SchedulerError::Unsupported {
                field: "sigma schedule",
                value: key.into(),
                hint: format!(" in {scheduler}"),
            });
        }
    }
    if config.str_or("interpolation_type", "linear")? != "linear" {
        return Err(SchedulerError::Unsupported {
            field: "interpolation_type",
            value: config.str_or("interpolation_type", "linear")?.into(),
            hint: String::new(),
        });
    }
    if config.str_or("timestep_type", "discrete")? != "discrete" {
        return Err(SchedulerError::Unsupported {
            field: "timestep_type",
            value: "continuous".into(),
            hint: String::new(),
        });
    }
    Ok(())
}

impl Scheduler for EulerDiscreteScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        let final_sigma = if self.final_sigma_min { self.schedule.train_sigmas[0] } else { 0.0 };
        self.schedule.set(steps, self.karras, final_sigma)
    }

    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule.init_noise_sigma()
    }

    fn set_begin_index(&mut self, index: usize) {
        self.schedule.index.set_begin(index);
    }

    fn scale_model_input(&self, sample: Tensor<4>) -> Result<Tensor<4>, SchedulerError> {
        self.schedule.scale(sample)
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        _rng: &mut TorchRng,
    ) -> Result<Tensor<4>, SchedulerError> {
        let i = self.schedule.index.checked(self.schedule.timesteps.len())?;
        let sigma = self.schedule.sigmas[i];
        // gamma = 0 without churn, so sigma_hat = sigma.
        let sigma_hat = sigma * (0.0 + 1.0);
        let x0 = sigma_x0(self.prediction, model_output, sample.clone(), sigma_hat);
        let derivative = (sample.clone() - x0) / sigma_hat;
        let dt = self.schedule.sigmas[i + 1] - sigma_hat;
        self.schedule.index.advance();
        Ok(sample + derivative * dt)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Result<Tensor<4>, SchedulerError> {
        self.schedule.add_noise(original, noise, index)
    }
}
