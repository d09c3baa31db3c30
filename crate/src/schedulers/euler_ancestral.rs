//! Euler ancestral ("Euler a"), diffusers' `EulerAncestralDiscreteScheduler`: an Euler step down to
//! `sigma_down`, then fresh noise of scale `sigma_up`.

use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig};
use super::euler::{SigmaSchedule, check_sigma_options, sigma_x0};
use super::{Scheduler, SchedulerError, randn_like};
use crate::rng::TorchRng;

/// diffusers' `EulerAncestralDiscreteScheduler`.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    pub(crate) schedule: SigmaSchedule,
    prediction: PredictionType,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the scheduler from a config with `EulerAncestralDiscreteScheduler`'s defaults.
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        check_sigma_options(config, "EulerAncestralDiscreteScheduler")?;
        if config.bool_or("use_karras_sigmas", false)? {
            return Err(SchedulerError::Unsupported {
                field: "use_karras_sigmas",
                value: "true".into(),
                hint: " in EulerAncestralDiscreteScheduler (diffusers ignores it there; unset it)".into(),
            });
        }
        let prediction = config.prediction_type("epsilon")?;
        if prediction == PredictionType::Sample {
            return Err(SchedulerError::UnsupportedPrediction {
                scheduler: "EulerAncestralDiscreteScheduler",
                prediction: "sample".into(),
            });
        }
        Ok(Self { schedule: SigmaSchedule::new(config)?, prediction })
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        self.schedule.set(steps, false, 0.0)
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
        rng: &mut TorchRng,
    ) -> Result<Tensor<4>, SchedulerError> {
        let i = self.schedule.index.checked(self.schedule.timesteps.len())?;
        let (sigma_from, sigma_to) = (self.schedule.sigmas[i], self.schedule.sigmas[i + 1]);
        let x0 = sigma_x0(self.prediction, model_output.clone(), sample.clone(), sigma_from);
        let sigma_up =
            (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = (sample.clone() - x0) / sigma_from;
        let prev = sample + derivative * (sigma_down - sigma_from);
        let noise = randn_like(rng, &model_output);
        self.schedule.index.advance();
        Ok(prev + noise * sigma_up)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Result<Tensor<4>, SchedulerError> {
        self.schedule.add_noise(original, noise, index)
    }
}
