//! PNDM (Liu et al. 2022), diffusers' `PNDMScheduler`: Runge-Kutta warm-up steps (PRK) unless
//! `skip_prk_steps`, then linear multistep (PLMS). SD 1.x ships it with `skip_prk_steps: true`.

use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::ddim::add_noise_alpha;
use super::tables::{alphas_cumprod, betas, np_linspace};
use super::{Scheduler, SchedulerError, check_steps, check_timesteps};
use crate::rng::TorchRng;

const PNDM_ORDER: usize = 4;

/// diffusers' `PNDMScheduler`.
#[derive(Debug, Clone)]
pub struct PndmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    train_steps: usize,
    steps_offset: usize,
    spacing: TimestepSpacing,
    prediction: PredictionType,
    skip_prk_steps: bool,
    steps: usize,
    prk_len: usize,
    timesteps: Vec<f64>,
    /// Where the denoising loop starts in `timesteps` (img2img); the counter still starts at 0.
    begin: usize,
    counter: usize,
    ets: Vec<Tensor<4>>,
    cur_sample: Option<Tensor<4>>,
    cur_model_output: Option<Tensor<4>>,
}

impl PndmScheduler {
    /// Builds the scheduler from a config with `PNDMScheduler`'s defaults.
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        let alphas_cumprod = alphas_cumprod(&betas(config, "linear", 0.0001, 0.02)?);
        let prediction = config.prediction_type("epsilon")?;
        if prediction == PredictionType::Sample {
            return Err(SchedulerError::UnsupportedPrediction {
                scheduler: "PNDMScheduler",
                prediction: "sample".into(),
            });
        }
        Ok(Self {
            final_alpha_cumprod: if config.bool_or("set_alpha_to_one", false)? { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            train_steps: config.usize_or("num_train_timesteps", 1000)?,
            steps_offset: config.usize_or("steps_offset", 0)?,
            spacing: config.timestep_spacing("leading")?,
            prediction,
            skip_prk_steps: config.bool_or("skip_prk_steps", false)?,
            steps: 0,
            prk_len: 0,
            timesteps: Vec::new(),
            begin: 0,
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
            cur_model_output: None,
        })
    }

    /// The ascending base timesteps (diffusers' `_timesteps`).
    fn base_timesteps(&self, steps: usize) -> Vec<i64> {
        let t = self.train_steps;
        match self.spacing {
            TimestepSpacing::Linspace => {
                np_linspace(0.0, (t - 1) as f64, steps).into_iter().map(|v| v.round_ties_even() as i64).collect()
            }
            TimestepSpacing::Leading => (0..steps).map(|i| (i * (t / steps) + self.steps_offset) as i64).collect(),
            TimestepSpacing::Trailing => {
                let mut v = super::tables::spaced_timesteps(TimestepSpacing::Trailing, t, steps, 0);
                v.reverse();
                v.into_iter().map(|x| x as i64).collect()
            }
        }
    }

    fn prev_sample(&self, sample: Tensor<4>, t: i64, prev_t: i64, model_output: Tensor<4>) -> Tensor<4> {
        let alpha_prod_t = self.alphas_cumprod[t as usize];
        let alpha_prod_t_prev =
            if prev_t >= 0 { self.alphas_cumprod[prev_t as usize] } else { self.final_alpha_cumprod };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let model_output = match self.prediction {
            PredictionType::VPrediction => model_output * alpha_prod_t.sqrt() + sample.clone() * beta_prod_t.sqrt(),
            _ => model_output,
        };
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let denom = alpha_prod_t * beta_prod_t_prev.sqrt() + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        sample * sample_coeff - model_output * (alpha_prod_t_prev - alpha_prod_t) / denom
    }

    fn step_prk(&mut self, model_output: Tensor<4>, sample: Tensor<4>, t: i64) -> Tensor<4> {
        let half = (self.train_steps / self.steps / 2) as i64;
        let prev_t = t - if self.counter % 2 == 1 { 0 } else { half };
        let t = self.timesteps[self.counter / 4 * 4] as i64;
        let add = |acc: Option<Tensor<4>>, x: Tensor<4>| match acc {
            Some(acc) => acc + x,
            None => x,
        };
        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(add(self.cur_model_output.take(), model_output.clone() * (1.0f32 / 6.0)));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output
            }
            1 | 2 => {
                self.cur_model_output = Some(add(self.cur_model_output.take(), model_output.clone() * (1.0f32 / 3.0)));
                model_output
            }
            _ => add(self.cur_model_output.take(), model_output * (1.0f32 / 6.0)),
        };
        let cur_sample = self.cur_sample.clone().unwrap_or(sample);
        self.prev_sample(cur_sample, t, prev_t, model_output)
    }

    fn step_plms(&mut self, model_output: Tensor<4>, sample: Tensor<4>, t: i64) -> Tensor<4> {
        let stride = (self.train_steps / self.steps) as i64;
        let (mut t, mut prev_t) = (t, t - stride);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_t = t;
            t += stride;
        }
        let e = |k: usize| self.ets[self.ets.len() - k].clone();
        let (model_output, sample) = match self.ets.len() {
            1 if self.counter == 0 => {
                self.cur_sample = Some(sample.clone());
                (model_output, sample)
            }
            1 => {
                let cur = self.cur_sample.take().unwrap_or(sample);
                ((model_output + e(1)) / 2.0, cur)
            }
            2 => ((e(1) * 3.0 - e(2)) / 2.0, sample),
            3 => ((e(1) * 23.0 - e(2) * 16.0 + e(3) * 5.0) / 12.0, sample),
            _ => ((e(1) * 55.0 - e(2) * 59.0 + e(3) * 37.0 - e(4) * 9.0) * (1.0f32 / 24.0), sample),
        };
        self.prev_sample(sample, t, prev_t, model_output)
    }
}

impl Scheduler for PndmScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        check_steps(steps, self.train_steps)?;
        let base = self.base_timesteps(steps);
        check_timesteps(base.iter().copied(), steps, self.train_steps)?;
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.skip_prk_steps {
            // [t0 .. t_{n-2}, t_{n-2}, t_{n-1}] reversed: the second-to-last timestep twice.
            let n = base.len();
            let mut plms: Vec<i64> = base[..n.saturating_sub(1)].to_vec();
            if n >= 2 {
                plms.push(base[n - 2]);
            }
            plms.push(base[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            if steps < PNDM_ORDER {
                return Err(SchedulerError::Unsupported {
                    field: "skip_prk_steps",
                    value: "false".into(),
                    hint: format!(" with fewer than {PNDM_ORDER} steps (the Runge-Kutta warm-up needs them)"),
                });
            }
            let half = (self.train_steps / steps / 2) as i64;
            let last: Vec<i64> = base[base.len() - PNDM_ORDER..].iter().flat_map(|&t| [t, t + half]).collect();
            let doubled: Vec<i64> = last[..last.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = base[..base.len().saturating_sub(3)].to_vec();
            plms.reverse();
            (prk, plms)
        };
        self.steps = steps;
        self.prk_len = prk.len();
        self.timesteps = prk.into_iter().chain(plms).map(|t| t as f64).collect();
        self.begin = 0;
        self.counter = 0;
        self.ets.clear();
        self.cur_sample = None;
        self.cur_model_output = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn set_begin_index(&mut self, index: usize) {
        self.begin = index;
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        _rng: &mut TorchRng,
    ) -> Result<Tensor<4>, SchedulerError> {
        let index = self.begin + self.counter;
        let len = self.timesteps.len();
        let t = *self.timesteps.get(index).ok_or(SchedulerError::OutOfSteps { index, len })? as i64;
        let prev = if self.counter < self.prk_len && !self.skip_prk_steps {
            self.step_prk(model_output, sample, t)
        } else {
            self.step_plms(model_output, sample, t)
        };
        self.counter += 1;
        Ok(prev)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Result<Tensor<4>, SchedulerError> {
        add_noise_alpha(&self.alphas_cumprod, &self.timesteps, original, noise, index)
    }
}
