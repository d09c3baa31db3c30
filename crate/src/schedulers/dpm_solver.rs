//! DPM-Solver++ multistep (Lu et al. 2022), diffusers' `DPMSolverMultistepScheduler`: "DPM++ 2M" with
//! `solver_order: 2`, "DPM++ 2M Karras" with `use_karras_sigmas: true`.

use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::ddim::unsupported_thresholding;
use super::euler::check_sigma_options;
use super::tables::{alphas_cumprod, betas, karras_sigmas, np_arange, np_interp, np_linspace, sigma_to_t, sigmas_f32};
use super::{Scheduler, SchedulerError, StepIndex, check_steps};
use crate::rng::TorchRng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// Data prediction (DPM-Solver++), the default.
    DpmSolverPlusPlus,
    /// Noise prediction (DPM-Solver).
    DpmSolver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

/// diffusers' `DPMSolverMultistepScheduler` (orders 1 and 2, deterministic algorithms).
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    train_sigmas: Vec<f32>,
    /// lambda_t = log(alpha_t) - log(sigma_t) per training timestep (f32), for `lambda_min_clipped`.
    train_lambdas: Vec<f32>,
    train_steps: usize,
    steps_offset: usize,
    spacing: TimestepSpacing,
    prediction: PredictionType,
    algorithm: Algorithm,
    solver: SolverType,
    order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_min: bool,
    karras: bool,
    round_karras_timesteps: bool,
    lambda_min_clipped: f64,
    pub(crate) sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    index: StepIndex,
    /// The last `order` converted model outputs, oldest first.
    model_outputs: Vec<Tensor<4>>,
    lower_order_nums: usize,
}

fn unsupported(field: &'static str, value: &str, hint: &str) -> SchedulerError {
    SchedulerError::Unsupported { field, value: value.to_string(), hint: hint.to_string() }
}

impl DpmSolverMultistepScheduler {
    /// Builds the scheduler from a config with `DPMSolverMultistepScheduler`'s defaults;
    /// `karras` overrides `use_karras_sigmas` (the `dpmpp-2m-karras` name).
    pub fn new(config: &SchedulerConfig, karras: Option<bool>) -> Result<Self, SchedulerError> {
        check_sigma_options(config, "DPMSolverMultistepScheduler")?;
        if config.bool_or("thresholding", false)? {
            return Err(unsupported_thresholding());
        }
        let algorithm = match config.str_or("algorithm_type", "dpmsolver++")? {
            "dpmsolver++" | "deis" => Algorithm::DpmSolverPlusPlus,
            "dpmsolver" => Algorithm::DpmSolver,
            other => {
                return Err(unsupported("algorithm_type", other, " (stochastic SDE variants are not implemented)"));
            }
        };
        let solver = match config.str_or("solver_type", "midpoint")? {
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => return Err(unsupported("solver_type", other, "")),
        };
        let order = config.usize_or("solver_order", 2)?;
        if !(1..=2).contains(&order) {
            return Err(unsupported("solver_order", &order.to_string(), " (orders 1 and 2 are implemented)"));
        }
        if !config.str_or("variance_type", "")?.is_empty() {
            return Err(unsupported("variance_type", "learned", " (needs a UNet predicting its variance)"));
        }
        let final_sigma_min = match config.str_or("final_sigmas_type", "zero")? {
            "zero" => false,
            "sigma_min" => true,
            other => return Err(unsupported("final_sigmas_type", other, "")),
        };
        if algorithm == Algorithm::DpmSolver && !final_sigma_min {
            return Err(unsupported("final_sigmas_type", "zero", " with algorithm_type dpmsolver (use sigma_min)"));
        }
        let prediction = config.prediction_type("epsilon")?;
        let alphas_cumprod = alphas_cumprod(&betas(config, "linear", 0.0001, 0.02)?);
        let train_lambdas = alphas_cumprod.iter().map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln()).collect();
        Ok(Self {
            train_sigmas: sigmas_f32(&alphas_cumprod),
            train_lambdas,
            train_steps: config.usize_or("num_train_timesteps", 1000)?,
            steps_offset: config.usize_or("steps_offset", 0)?,
            spacing: config.timestep_spacing("linspace")?,
            prediction,
            algorithm,
            solver,
            order,
            lower_order_final: config.bool_or("lower_order_final", true)?,
            euler_at_final: config.bool_or("euler_at_final", false)?,
            final_sigma_min,
            karras: match karras {
                Some(k) => k,
                None => config.bool_or("use_karras_sigmas", false)?,
            },
            round_karras_timesteps: config.str_or("beta_schedule", "linear")? != "squaredcos_cap_v2",
            lambda_min_clipped: config.f64_or("lambda_min_clipped", f64::NEG_INFINITY)?,
            sigmas: Vec::new(),
            timesteps: Vec::new(),
            index: StepIndex::default(),
            model_outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// `alpha_t = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha_t` (f32, as diffusers).
    pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }

    pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
        alpha.ln() - sigma.ln()
    }

    /// The model output in the solver's parameterisation: the clean sample (DPM-Solver++) or the
    /// noise (DPM-Solver).
    fn convert(&self, model_output: Tensor<4>, sample: Tensor<4>, i: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[i]);
        match (self.algorithm, self.prediction) {
            (Algorithm::DpmSolverPlusPlus, PredictionType::Epsilon) => (sample - model_output * sigma_t) / alpha_t,
            (Algorithm::DpmSolverPlusPlus, PredictionType::Sample) => model_output,
            (Algorithm::DpmSolverPlusPlus, PredictionType::VPrediction) => sample * alpha_t - model_output * sigma_t,
            (Algorithm::DpmSolver, PredictionType::Epsilon) => model_output,
            (Algorithm::DpmSolver, PredictionType::Sample) => (sample - model_output * alpha_t) / sigma_t,
            (Algorithm::DpmSolver, PredictionType::VPrediction) => model_output * alpha_t + sample * sigma_t,
        }
    }

    fn first_order(&self, m0: Tensor<4>, sample: Tensor<4>, i: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = Self::alpha_sigma(self.sigmas[i]);
        let h = Self::lambda(alpha_t, sigma_t) - Self::lambda(alpha_s, sigma_s);
        match self.algorithm {
            Algorithm::DpmSolverPlusPlus => sample * (sigma_t / sigma_s) - m0 * (alpha_t * ((-h).exp() - 1.0)),
            Algorithm::DpmSolver => sample * (alpha_t / alpha_s) - m0 * (sigma_t * (h.exp() - 1.0)),
        }
    }

    fn second_order(&self, sample: Tensor<4>, i: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = Self::alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = Self::alpha_sigma(self.sigmas[i - 1]);
        let (lambda_t, lambda_s0, lambda_s1) =
            (Self::lambda(alpha_t, sigma_t), Self::lambda(alpha_s0, sigma_s0), Self::lambda(alpha_s1, sigma_s1));
        let n = self.model_outputs.len();
        let (m0, m1) = (self.model_outputs[n - 1].clone(), self.model_outputs[n - 2].clone());
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d1 = (m0.clone() - m1) * (1.0 / r0);
        let d0 = m0;
        match (self.algorithm, self.solver) {
            (Algorithm::DpmSolverPlusPlus, SolverType::Midpoint) => {
                let c = alpha_t * ((-h).exp() - 1.0);
                sample * (sigma_t / sigma_s0) - d0 * c - d1 * (0.5 * c)
            }
            (Algorithm::DpmSolverPlusPlus, SolverType::Heun) => {
                sample * (sigma_t / sigma_s0) - d0 * (alpha_t * ((-h).exp() - 1.0))
                    + d1 * (alpha_t * (((-h).exp() - 1.0) / h + 1.0))
            }
            (Algorithm::DpmSolver, SolverType::Midpoint) => {
                let c = sigma_t * (h.exp() - 1.0);
                sample * (alpha_t / alpha_s0) - d0 * c - d1 * (0.5 * c)
            }
            (Algorithm::DpmSolver, SolverType::Heun) => {
                sample * (alpha_t / alpha_s0)
                    - d0 * (sigma_t * (h.exp() - 1.0))
                    - d1 * (sigma_t * ((h.exp() - 1.0) / h - 1.0))
            }
        }
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        check_steps(steps, self.train_steps)?;
        let t = self.train_steps;
        // Timesteps whose lambda is below lambda_min_clipped are cut from the top.
        let clipped = self.train_lambdas.iter().rev().filter(|&&l| (l as f64) < self.lambda_min_clipped).count();
        let last = t - clipped;
        let mut timesteps: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => {
                let v = np_linspace(0.0, (last - 1) as f64, steps + 1);
                v.into_iter().rev().take(steps).map(f64::round_ties_even).collect()
            }
            TimestepSpacing::Leading => {
                let ratio = last / (steps + 1);
                (1..=steps).rev().map(|i| (i * ratio + self.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = t as f64 / steps as f64;
                np_arange(last as f64, 0.0, -ratio).into_iter().map(|t| t.round_ties_even() - 1.0).collect()
            }
        };
        let fp: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let sigmas: Vec<f64> = if self.karras {
            let log_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s.ln() as f64).collect();
            let sigmas = karras_sigmas(fp[0], fp[fp.len() - 1], steps);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas))
                .map(|t| if self.round_karras_timesteps { t.round_ties_even() } else { t })
                .collect();
            sigmas
        } else {
            timesteps.iter().map(|&t| np_interp(t, &fp)).collect()
        };
        let final_sigma = if self.final_sigma_min { self.train_sigmas[0] } else { 0.0 };
        self.sigmas = sigmas.into_iter().map(|s| s as f32).chain([final_sigma]).collect();
        // Stored as int64 by diffusers.
        self.timesteps = timesteps.into_iter().map(|t| t.trunc()).collect();
        self.index.reset();
        self.model_outputs.clear();
        self.lower_order_nums = 0;
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
        _rng: &mut TorchRng,
    ) -> Result<Tensor<4>, SchedulerError> {
        let len = self.timesteps.len();
        let i = self.index.checked(len)?;
        let small = len < 15;
        let lower_order_final =
            i == len - 1 && (self.euler_at_final || (self.lower_order_final && small) || !self.final_sigma_min);

        let converted = self.convert(model_output, sample.clone(), i);
        self.model_outputs.push(converted.clone());
        if self.model_outputs.len() > self.order {
            self.model_outputs.remove(0);
        }
        let prev = if self.order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(converted, sample, i)
        } else {
            // Order 2 (higher orders are refused at construction, so diffusers' `lower_order_second`
            // fallback never applies).
            self.second_order(sample, i)
        };
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        self.index.advance();
        Ok(prev)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Result<Tensor<4>, SchedulerError> {
        let len = self.timesteps.len();
        let sigma = *self.sigmas.get(index).filter(|_| index < len).ok_or(SchedulerError::OutOfSteps { index, len })?;
        let (alpha_t, sigma_t) = Self::alpha_sigma(sigma);
        Ok(original * alpha_t + noise * sigma_t)
    }
}
