//! Noise schedulers mirroring diffusers: one trait, seven schedulers, built from the model's own
//! `scheduler/scheduler_config.json`.
//!
//! Precision follows diffusers exactly where it matters for bit-level agreement: the tables diffusers
//! keeps in torch float32 (betas, alphas_cumprod, the per-step scalars) are f32 here too and the
//! per-step scalar arithmetic is done in f32 in the same order; what diffusers computes with numpy in
//! float64 (timestep spacing, sigma interpolation, Karras sigmas) is f64 here. The tensor math then runs
//! on the device as scalar-tensor ops, with no readback.

mod config;
mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod lcm;
mod pndm;
mod tables;

use burn::tensor::{Device, Tensor, TensorData};

pub use config::{PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddim::DdimScheduler;
pub use ddpm::DdpmScheduler;
pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use lcm::LcmScheduler;
pub use pndm::PndmScheduler;
pub use tables::{alphas_cumprod, betas, karras_sigmas, np_interp, np_linspace, sigma_to_t, torch_linspace_f32};

use crate::rng::TorchRng;

/// Errors of scheduler construction and use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// `--scheduler NAME` (or a config's `_class_name`) is not one we implement.
    #[error("unknown scheduler {0:?} (known: ddpm, ddim, pndm, euler, euler-a, dpmpp-2m, dpmpp-2m-karras, lcm)")]
    UnknownScheduler(String),
    /// A config field has a value we do not know.
    #[error("scheduler config: {field} = {value:?} is not supported{hint}")]
    Unsupported { field: &'static str, value: String, hint: String },
    /// A config field has the wrong JSON type.
    #[error("scheduler config: field {field} must be {expected}")]
    BadField { field: String, expected: &'static str },
    /// A config field is out of bounds or inconsistent ([`SchedulerConfig::check`]).
    #[error("scheduler config: {field} {value} {problem}")]
    BadValue { field: &'static str, value: String, problem: String },
    /// The prediction type is not supported by the chosen scheduler (as in diffusers).
    #[error("{scheduler} does not support prediction_type {prediction:?}")]
    UnsupportedPrediction { scheduler: &'static str, prediction: String },
    /// `set_timesteps(0)`.
    #[error("the number of inference steps must be at least 1")]
    ZeroSteps,
    /// More inference steps than the model was trained with.
    #[error("{steps} inference steps is more than the {max} training timesteps the scheduler allows")]
    TooManySteps { steps: usize, max: usize },
    /// A timestep past the training tables: `steps_offset` moves the last one up (1000 steps with offset
    /// 1 ask for timestep 1000 of 0..=999, where diffusers fails with an IndexError).
    #[error("{steps} inference steps reach timestep {timestep}, past the {train_steps} training timesteps (0 to {last}); use fewer steps", last = train_steps - 1)]
    TimestepOutOfRange { steps: usize, timestep: i64, train_steps: usize },
    /// `step` called before `set_timesteps`, or after the last timestep.
    #[error("scheduler step {index} is outside the {len} timesteps set (call set_timesteps first)")]
    OutOfSteps { index: usize, len: usize },
}

/// The schedulers we implement, by their CLI names (the web app's `<select>` uses the same values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddpm,
    Ddim,
    Pndm,
    Euler,
    EulerAncestral,
    DpmSolverMultistep,
    DpmSolverMultistepKarras,
    Lcm,
}

impl SchedulerKind {
    /// All kinds, in the order the UI lists them.
    pub const ALL: [SchedulerKind; 8] = [
        Self::Ddpm,
        Self::Ddim,
        Self::Pndm,
        Self::Euler,
        Self::EulerAncestral,
        Self::DpmSolverMultistep,
        Self::DpmSolverMultistepKarras,
        Self::Lcm,
    ];

    /// The CLI / UI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Ddim => "ddim",
            Self::Pndm => "pndm",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::DpmSolverMultistep => "dpmpp-2m",
            Self::DpmSolverMultistepKarras => "dpmpp-2m-karras",
            Self::Lcm => "lcm",
        }
    }

    /// Parses a CLI name.
    pub fn from_name(name: &str) -> Result<Self, SchedulerError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| SchedulerError::UnknownScheduler(name.to_string()))
    }

    /// The scheduler a model ships with: its `scheduler_config.json`'s `_class_name` (PNDM when absent,
    /// as in diffusers' SD pipelines).
    pub fn model_default(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        Self::from_class_name(config.class_name().unwrap_or("PNDMScheduler"), config)
    }

    /// The kind a diffusers `_class_name` denotes (a model's default scheduler).
    pub fn from_class_name(class: &str, config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        Ok(match class {
            "DDPMScheduler" => Self::Ddpm,
            "DDIMScheduler" => Self::Ddim,
            "PNDMScheduler" => Self::Pndm,
            "EulerDiscreteScheduler" => Self::Euler,
            "EulerAncestralDiscreteScheduler" => Self::EulerAncestral,
            "DPMSolverMultistepScheduler" if config.bool_or("use_karras_sigmas", false)? => {
                Self::DpmSolverMultistepKarras
            }
            "DPMSolverMultistepScheduler" => Self::DpmSolverMultistep,
            "LCMScheduler" => Self::Lcm,
            other => return Err(SchedulerError::UnknownScheduler(other.to_string())),
        })
    }

    /// Its name in the page's form.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pndm => "PNDM",
            other => other.a1111_name(),
        }
    }

    /// A1111's sampler name, for the PNG `parameters` chunk.
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::Ddpm => "DDPM",
            Self::Ddim => "DDIM",
            Self::Pndm => "PLMS",
            Self::Euler => "Euler",
            Self::EulerAncestral => "Euler a",
            Self::DpmSolverMultistep => "DPM++ 2M",
            Self::DpmSolverMultistepKarras => "DPM++ 2M Karras",
            Self::Lcm => "LCM",
        }
    }
}

/// The interface every scheduler implements, mirroring diffusers' `SchedulerMixin`.
///
/// Steps are taken in order: after `set_timesteps(n)` (and, for img2img, `set_begin_index`), the
/// denoising loop calls `scale_model_input` and `step` once per entry of `timesteps()`. The scheduler
/// keeps its own step counter and history, as diffusers does.
pub trait Scheduler {
    /// Computes the inference timesteps (and sigmas) for `steps` denoising steps.
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError>;
    /// The timesteps the UNet is called with, in order (PNDM repeats one).
    fn timesteps(&self) -> &[f64];
    /// Multiplier of the initial noise (`latents * init_noise_sigma`); 1 for the alpha-based schedulers.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// How many entries of `timesteps()` one denoising step uses (diffusers' `order`, 1 for all ours).
    fn order(&self) -> usize {
        1
    }
    /// Starts the loop at `timesteps()[index]` (img2img / inpainting with strength < 1).
    fn set_begin_index(&mut self, index: usize);
    /// Scales the UNet input for the current step (the identity, except for the sigma schedulers).
    ///
    /// # Shapes
    /// - sample: `[batch, channels, height, width]`, returned unchanged in shape
    fn scale_model_input(&self, sample: Tensor<4>) -> Result<Tensor<4>, SchedulerError> {
        Ok(sample)
    }
    /// One denoising step: from the UNet's output at the current timestep to the previous sample.
    /// Stochastic schedulers draw their noise from `rng` in diffusers' order.
    ///
    /// # Shapes
    /// - model_output, sample: `[batch, channels, height, width]`; returns the same shape
    fn step(
        &mut self,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        rng: &mut TorchRng,
    ) -> Result<Tensor<4>, SchedulerError>;
    /// Noises clean latents to `timesteps()[index]` (img2img), with noise drawn by the caller.
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Result<Tensor<4>, SchedulerError>;
}

/// Builds the scheduler `kind` from a model's scheduler config (diffusers' `from_config`: the model's
/// betas and other shared fields are kept, fields the config lacks take the new class's defaults).
pub fn build(kind: SchedulerKind, config: &SchedulerConfig) -> Result<Box<dyn Scheduler>, SchedulerError> {
    // Before any table is built from it (a config read elsewhere may not have been checked).
    config.check()?;
    Ok(match kind {
        SchedulerKind::Ddpm => Box::new(DdpmScheduler::new(config)?),
        SchedulerKind::Ddim => Box::new(DdimScheduler::new(config)?),
        SchedulerKind::Pndm => Box::new(PndmScheduler::new(config)?),
        SchedulerKind::Euler => Box::new(EulerDiscreteScheduler::new(config)?),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestralDiscreteScheduler::new(config)?),
        SchedulerKind::DpmSolverMultistep => Box::new(DpmSolverMultistepScheduler::new(config, None)?),
        SchedulerKind::DpmSolverMultistepKarras => Box::new(DpmSolverMultistepScheduler::new(config, Some(true))?),
        SchedulerKind::Lcm => Box::new(LcmScheduler::new(config)?),
    })
}

/// Standard-normal noise shaped like `like`, drawn from `rng` exactly as `randn_tensor` draws it.
pub(crate) fn randn_like(rng: &mut TorchRng, like: &Tensor<4>) -> Tensor<4> {
    randn(rng, like.dims(), &like.device())
}

/// Standard-normal noise of `shape` on `device` from `rng` (torch.randn semantics).
pub fn randn(rng: &mut TorchRng, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let values = rng.randn(shape.iter().product());
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// [`randn`] in f32 whatever the device computes in (the noise of an upcast VAE's sampling).
pub fn randn_f32(rng: &mut TorchRng, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let values = rng.randn(shape.iter().product());
    Tensor::from_data(TensorData::new(values, shape), (device, burn::tensor::DType::F32))
}

/// The step counter shared by the schedulers that index their tables by step (diffusers' `step_index`).
#[derive(Debug, Clone, Default)]
pub(crate) struct StepIndex {
    begin: usize,
    current: Option<usize>,
}

impl StepIndex {
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
    pub(crate) fn set_begin(&mut self, index: usize) {
        self.begin = index;
        self.current = None;
    }
    /// The current step (the begin index until the first `advance`).
    pub(crate) fn get(&self) -> usize {
        self.current.unwrap_or(self.begin)
    }
    pub(crate) fn advance(&mut self) {
        self.current = Some(self.get() + 1);
    }
    /// The current index, checked against the number of timesteps.
    pub(crate) fn checked(&self, len: usize) -> Result<usize, SchedulerError> {
        let index = self.get();
        if index < len { Ok(index) } else { Err(SchedulerError::OutOfSteps { index, len }) }
    }
}

/// Validates a step count like diffusers' `set_timesteps`.
pub(crate) fn check_steps(steps: usize, train_steps: usize) -> Result<(), SchedulerError> {
    if steps == 0 {
        return Err(SchedulerError::ZeroSteps);
    }
    if steps > train_steps {
        return Err(SchedulerError::TooManySteps { steps, max: train_steps });
    }
    Ok(())
}

/// Checks that every timestep indexes the training tables (see [`SchedulerError::TimestepOutOfRange`]).
pub(crate) fn check_timesteps(
    timesteps: impl IntoIterator<Item = i64>,
    steps: usize,
    train_steps: usize,
) -> Result<(), SchedulerError> {
    match timesteps.into_iter().find(|&t| t < 0 || t >= train_steps as i64) {
        Some(timestep) => Err(SchedulerError::TimestepOutOfRange { steps, timestep, train_steps }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
