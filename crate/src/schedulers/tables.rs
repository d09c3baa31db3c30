//! The host-side tables: beta schedules, cumulative alphas, timestep spacing and sigma tables, each
//! computed the way diffusers computes it (torch float32 where diffusers uses torch, numpy float64
//! where it uses numpy), so the timesteps match exactly and the sigmas to the last bit or two.

use super::SchedulerError;
use super::config::{SchedulerConfig, TimestepSpacing};

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU: f32 arithmetic, the first half
/// counted up from `start` and the second half down from `end`, as ATen's kernel does.
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 })
        .collect()
}

/// `np.linspace(start, stop, num)` in float64 (endpoint included, the last value exactly `stop`).
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// `np.arange(start, stop, step)` in float64: numpy's length and fill rule.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `np.interp(x, arange(len(fp)), fp)` (float64; exact hits return the table value, as numpy does).
pub fn np_interp(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j];
    }
    let slope = fp[j + 1] - fp[j];
    slope * (x - j as f64) + fp[j]
}

/// The beta schedule of a config, as torch float32 values.
pub fn betas(
    config: &SchedulerConfig,
    default_schedule: &str,
    default_start: f64,
    default_end: f64,
) -> Result<Vec<f32>, SchedulerError> {
    let train_steps = config.usize_or("num_train_timesteps", 1000)?;
    let start = config.f64_or("beta_start", default_start)?;
    let end = config.f64_or("beta_end", default_end)?;
    let betas = if let Some(trained) = config.trained_betas()? {
        trained.into_iter().map(|b| b as f32).collect()
    } else {
        match config.str_or("beta_schedule", default_schedule)? {
            "linear" => torch_linspace_f32(start, end, train_steps),
            "scaled_linear" => {
                torch_linspace_f32(start.sqrt(), end.sqrt(), train_steps).into_iter().map(|b| b * b).collect()
            }
            "squaredcos_cap_v2" => cosine_betas(train_steps),
            other => {
                return Err(SchedulerError::Unsupported {
                    field: "beta_schedule",
                    value: other.to_string(),
                    hint: " (expected linear, scaled_linear or squaredcos_cap_v2)".into(),
                });
            }
        }
    };
    if betas.len() != train_steps {
        return Err(SchedulerError::BadField {
            field: "trained_betas".into(),
            expected: "one beta per training timestep",
        });
    }
    if config.bool_or("rescale_betas_zero_snr", false)? {
        return Ok(rescale_zero_terminal_snr(&betas));
    }
    Ok(betas)
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform (Nichol & Dhariwal), in float64, then f32.
fn cosine_betas(steps: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..steps)
        .map(|i| {
            let (t1, t2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `torch.cumprod(1 - betas)` on the CPU: f32 inputs, double accumulator, each product rounded to f32.
pub fn alphas_cumprod(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// Zero terminal SNR rescaling (Lin et al. 2023, Algorithm 1), in f32 like diffusers.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let sqrt: Vec<f32> = alphas_cumprod(betas).into_iter().map(f32::sqrt).collect();
    let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = first / (first - last);
    let bar: Vec<f32> = sqrt.iter().map(|s| ((s - last) * scale).powi(2)).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// The Karras et al. (2022) sigma ramp with rho = 7 between `sigma_max` and `sigma_min`, float64.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    np_linspace(0.0, 1.0, steps).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep of `sigma`, by interpolating in log
/// sigma. `log_sigmas` are increasing with the timestep.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log sigma is <= log_sigma (0 if none), kept below the last pair.
    let low = log_sigmas.iter().rposition(|&l| log_sigma - l >= 0.0).unwrap_or(0).min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// `sqrt((1 - a) / a)` per training timestep in f32, as diffusers' sigma tables compute it in torch.
pub fn sigmas_f32(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// Descending inference timesteps for DDPM/DDIM-style schedulers (integers), per `timestep_spacing`.
pub fn spaced_timesteps(spacing: TimestepSpacing, train_steps: usize, steps: usize, offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            np_linspace(0.0, (train_steps - 1) as f64, steps).into_iter().rev().map(f64::round_ties_even).collect()
        }
        TimestepSpacing::Leading => {
            let ratio = train_steps / steps;
            (0..steps).rev().map(|i| (i * ratio + offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train_steps as f64 / steps as f64;
            np_arange(train_steps as f64, 0.0, -ratio).into_iter().map(|t| t.round_ties_even() - 1.0).collect()
        }
    }
}

/// Descending timesteps for the sigma (Euler) schedulers: like [`spaced_timesteps`] but `linspace`
/// is not rounded (diffusers keeps them as float32).
pub fn sigma_timesteps(spacing: TimestepSpacing, train_steps: usize, steps: usize, offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            np_linspace(0.0, (train_steps - 1) as f64, steps).into_iter().rev().map(|t| t as f32 as f64).collect()
        }
        other => spaced_timesteps(other, train_steps, steps, offset),
    }
}
