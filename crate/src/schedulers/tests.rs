//! Scheduler tables against values computed independently from the formulas, the exact-noise
//! consistency of every deterministic scheduler, and the typed errors for bad input.

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::json;

use super::tables::{np_arange, spaced_timesteps};
use super::*;
use crate::rng::TorchRng;

/// SD 1.5's scheduler config (as its PNDM `scheduler_config.json` has it).
fn sd15() -> SchedulerConfig {
    SchedulerConfig::from_pairs([
        ("beta_start", json!(0.00085)),
        ("beta_end", json!(0.012)),
        ("beta_schedule", json!("scaled_linear")),
        ("num_train_timesteps", json!(1000)),
        ("set_alpha_to_one", json!(false)),
        ("skip_prk_steps", json!(true)),
        ("steps_offset", json!(1)),
        ("clip_sample", json!(false)),
    ])
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

#[test]
fn torch_linspace_and_scaled_linear_betas() {
    assert_eq!(torch_linspace_f32(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    let b = betas(&sd15(), "linear", 0.0, 0.0).unwrap();
    assert_eq!(b.len(), 1000);
    // scaled_linear: betas are the squares of a linear ramp between sqrt(start) and sqrt(end).
    for (i, &beta) in b.iter().enumerate() {
        let root = 0.00085f64.sqrt() + (0.012f64.sqrt() - 0.00085f64.sqrt()) * i as f64 / 999.0;
        assert!(close(beta as f64, root * root, 1e-6), "beta {i}: {beta} vs {}", root * root);
    }
}

#[test]
fn cosine_schedule_follows_alpha_bar() {
    let config = sd15().with("beta_schedule", json!("squaredcos_cap_v2"));
    let b = betas(&config, "linear", 0.0, 0.0).unwrap();
    let f = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    // The product of (1 - beta) telescopes to alpha_bar(t) / alpha_bar(0) while no beta is capped.
    let prod: f64 = b[..500].iter().map(|&x| 1.0 - x as f64).product();
    assert!(close(prod, f(0.5) / f(0.0), 1e-5), "{prod}");
    assert!(b.iter().all(|&x| x <= 0.999));
}

#[test]
fn alphas_cumprod_is_the_running_product() {
    let b = betas(&sd15(), "linear", 0.0, 0.0).unwrap();
    let ac = alphas_cumprod(&b);
    let mut p = 1.0f64;
    for (i, (&beta, &a)) in b.iter().zip(&ac).enumerate() {
        p *= 1.0 - beta as f64;
        assert!(close(a as f64, p, 1e-6), "alphas_cumprod[{i}]");
    }
    // SD 1.5's well-known end points.
    assert!(close(ac[0] as f64, 0.99915, 1e-6));
    assert!((0.0045..0.0048).contains(&ac[999]), "{}", ac[999]);
}

#[test]
fn timestep_spacings() {
    use TimestepSpacing::*;
    assert_eq!(spaced_timesteps(Leading, 1000, 8, 1), vec![876.0, 751.0, 626.0, 501.0, 376.0, 251.0, 126.0, 1.0]);
    assert_eq!(spaced_timesteps(Linspace, 1000, 8, 0), vec![999.0, 856.0, 714.0, 571.0, 428.0, 285.0, 143.0, 0.0]);
    assert_eq!(spaced_timesteps(Trailing, 1000, 8, 0), vec![999.0, 874.0, 749.0, 624.0, 499.0, 374.0, 249.0, 124.0]);
    // numpy's arange length rule with a non-integer step.
    assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 3.0).len(), 3);
    // Round half to even, as numpy: linspace(0, 999, 9)[4] = 499.5 -> 500.
    assert_eq!(np_linspace(0.0, 999.0, 9)[4].round_ties_even(), 500.0);
}

#[test]
fn interpolation_and_sigma_to_t_invert_each_other() {
    let fp: Vec<f64> = (0..10).map(|i| (i as f64 * 0.3).exp()).collect();
    assert_eq!(np_interp(3.0, &fp), fp[3]);
    assert!(close(np_interp(2.5, &fp), (fp[2] + fp[3]) / 2.0, 1e-12));
    assert_eq!(np_interp(-1.0, &fp), fp[0]);
    assert_eq!(np_interp(42.0, &fp), fp[9]);
    let log: Vec<f64> = fp.iter().map(|s| s.ln()).collect();
    for k in 0..9 {
        assert!(close(sigma_to_t(fp[k], &log), k as f64, 1e-12), "t of sigma {k}");
        let mid = ((log[k] + log[k + 1]) / 2.0).exp();
        assert!(close(sigma_to_t(mid, &log), k as f64 + 0.5, 1e-9));
    }
}

#[test]
fn karras_sigmas_are_a_rho_7_ramp() {
    let s = karras_sigmas(0.03, 14.6, 10);
    assert!(close(s[0], 14.6, 1e-12) && close(s[9], 0.03, 1e-12));
    let roots: Vec<f64> = s.iter().map(|x| x.powf(1.0 / 7.0)).collect();
    let step = roots[1] - roots[0];
    assert!(step < 0.0);
    for w in roots.windows(2) {
        assert!(close(w[1] - w[0], step, 1e-9));
    }
}

#[test]
fn dpm_solver_lambda_steps() {
    // lambda = log(alpha/sigma) = -log(sigma_karras) for VP sigmas: equal steps in lambda mean equal
    // ratios of sigma (use_lu_lambdas); the default linspace schedule has increasing lambda along it.
    let mut s = DpmSolverMultistepScheduler::new(&sd15(), Some(false)).unwrap();
    s.set_timesteps(8).unwrap();
    let lambdas: Vec<f32> = s
        .sigmas
        .iter()
        .take(8)
        .map(|&sig| {
            let (a, st) = DpmSolverMultistepScheduler::alpha_sigma(sig);
            DpmSolverMultistepScheduler::lambda(a, st)
        })
        .collect();
    for (l, &sig) in lambdas.iter().zip(&s.sigmas) {
        assert!(close(*l as f64, -(sig as f64).ln(), 1e-5), "lambda {l} vs -ln sigma {sig}");
    }
    assert!(lambdas.windows(2).all(|w| w[1] > w[0]), "{lambdas:?}");
}

fn tensor(values: Vec<f32>, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, [1, 1, 4, 4]), device)
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// With a UNet that predicts the true noise exactly, a deterministic scheduler must land each step on
/// the forward-noised sample of the next timestep: an end-to-end check of its formulas.
fn exact_noise_trajectory(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    target: impl Fn(&dyn Scheduler, usize, &[f32], &[f32]) -> Vec<f32>,
) {
    let device = Device::flex();
    let mut rng = TorchRng::new(1);
    let x0 = rng.randn(16);
    let eps = rng.randn(16);
    let mut s = build(kind, config).unwrap();
    s.set_timesteps(8).unwrap();
    let mut sample = s.add_noise(tensor(x0.clone(), &device), tensor(eps.clone(), &device), 0).unwrap();
    for i in 0..s.timesteps().len() {
        let expected = target(s.as_ref(), i, &x0, &eps);
        sample = s.step(tensor(eps.clone(), &device), sample, &mut rng).unwrap();
        let got = values(sample.clone());
        let diff = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff <= 2e-5, "{} step {i}: off by {diff}", kind.name());
    }
}

/// `sqrt(a) * x0 + sqrt(1 - a) * eps`.
fn vp(a: f32, x0: &[f32], eps: &[f32]) -> Vec<f32> {
    x0.iter().zip(eps).map(|(x, e)| a.sqrt() * x + (1.0 - a).sqrt() * e).collect()
}

#[test]
fn ddim_pndm_and_dpm_follow_the_exact_noise_trajectory() {
    let ac = alphas_cumprod(&betas(&sd15(), "linear", 0.0, 0.0).unwrap());
    let alpha_at = |t: i64| if t >= 0 { ac[t as usize] } else { ac[0] };
    // DDIM: from t to t - 1000/8.
    exact_noise_trajectory(SchedulerKind::Ddim, &sd15(), |s, i, x0, eps| {
        vp(alpha_at(s.timesteps()[i] as i64 - 125), x0, eps)
    });
    // PLMS: the same transfer, except the second call re-does the first step from the stored sample.
    exact_noise_trajectory(SchedulerKind::Pndm, &sd15(), |s, i, x0, eps| {
        let t = s.timesteps()[i] as i64;
        vp(alpha_at(if i == 1 { t } else { t - 125 }), x0, eps)
    });
    // DPM-Solver++ (orders 1 and 2, with and without Karras sigmas): VP form of the next sigma.
    for kind in [SchedulerKind::DpmSolverMultistep, SchedulerKind::DpmSolverMultistepKarras] {
        let mut probe =
            DpmSolverMultistepScheduler::new(&sd15(), Some(kind == SchedulerKind::DpmSolverMultistepKarras)).unwrap();
        probe.set_timesteps(8).unwrap();
        let sigmas = probe.sigmas.clone();
        exact_noise_trajectory(kind, &sd15(), move |_, i, x0, eps| {
            let (a, s) = DpmSolverMultistepScheduler::alpha_sigma(sigmas[i + 1]);
            x0.iter().zip(eps).map(|(x, e)| a * x + s * e).collect()
        });
    }
}

#[test]
fn euler_follows_the_exact_noise_trajectory() {
    for karras in [false, true] {
        let config = sd15().with("use_karras_sigmas", json!(karras));
        let mut probe = EulerDiscreteScheduler::new(&config).unwrap();
        probe.set_timesteps(8).unwrap();
        let sigmas = probe.schedule.sigmas.clone();
        exact_noise_trajectory(SchedulerKind::Euler, &config, move |_, i, x0, eps| {
            x0.iter().zip(eps).map(|(x, e)| x + sigmas[i + 1] * e).collect()
        });
    }
}

#[test]
fn euler_init_noise_sigma_and_input_scaling() {
    let mut s = EulerDiscreteScheduler::new(&sd15()).unwrap();
    s.set_timesteps(8).unwrap();
    let max = s.schedule.sigmas[0];
    assert!(close(max as f64, 14.6146, 1e-4), "{max}");
    assert_eq!(s.init_noise_sigma(), max);
    let x = s.scale_model_input(tensor(vec![1.0; 16], &Device::flex())).unwrap();
    assert!(close(values(x)[0] as f64, 1.0 / ((max as f64).powi(2) + 1.0).sqrt(), 1e-6));
    // Leading spacing uses sqrt(max^2 + 1).
    let mut lead = EulerDiscreteScheduler::new(&sd15().with("timestep_spacing", json!("leading"))).unwrap();
    lead.set_timesteps(8).unwrap();
    let m = lead.schedule.sigmas[0];
    assert_eq!(lead.init_noise_sigma(), (m * m + 1.0).sqrt());
}

#[test]
fn ancestral_schedulers_draw_noise_in_order() {
    let device = Device::flex();
    for kind in [SchedulerKind::EulerAncestral, SchedulerKind::Ddpm, SchedulerKind::Lcm] {
        let mut a = build(kind, &sd15()).unwrap();
        let mut b = build(kind, &sd15()).unwrap();
        a.set_timesteps(4).unwrap();
        b.set_timesteps(4).unwrap();
        let x = tensor(vec![0.5; 16], &device);
        let (mut ra, mut rb) = (TorchRng::new(7), TorchRng::new(8));
        let ya = values(a.step(x.clone(), x.clone(), &mut ra).unwrap());
        let yb = values(b.step(x.clone(), x.clone(), &mut rb).unwrap());
        assert_ne!(ya, yb, "{}: the step depends on the generator", kind.name());
        // Same seed, same result.
        let mut c = build(kind, &sd15()).unwrap();
        c.set_timesteps(4).unwrap();
        assert_eq!(values(c.step(x.clone(), x, &mut TorchRng::new(7)).unwrap()), ya);
    }
}

#[test]
fn lcm_timesteps_come_from_the_distillation_schedule() {
    let mut s = LcmScheduler::new(&sd15()).unwrap();
    s.set_timesteps(4).unwrap();
    // 50 original steps, k = 20: 999, 979, ... 19; every 12.5th of them.
    assert_eq!(s.timesteps(), &[999.0, 759.0, 499.0, 259.0]);
    assert!(matches!(s.set_timesteps(51), Err(SchedulerError::TooManySteps { steps: 51, max: 50 })));
}

#[test]
fn pndm_plms_timesteps_repeat_the_second_to_last() {
    let mut s = PndmScheduler::new(&sd15()).unwrap();
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps(), &[751.0, 501.0, 501.0, 251.0, 1.0]);
    // Without skip_prk_steps: 12 Runge-Kutta warm-up timesteps, then PLMS.
    let mut prk = PndmScheduler::new(&sd15().with("skip_prk_steps", json!(false))).unwrap();
    prk.set_timesteps(10).unwrap();
    assert_eq!(&prk.timesteps()[..4], &[901.0, 851.0, 851.0, 801.0]);
    assert_eq!(prk.timesteps().len(), 12 + 7);
}

#[test]
fn names_and_class_names() {
    for kind in SchedulerKind::ALL {
        assert_eq!(SchedulerKind::from_name(kind.name()).unwrap(), kind);
    }
    assert_eq!(SchedulerKind::from_class_name("PNDMScheduler", &sd15()).unwrap(), SchedulerKind::Pndm);
    let karras = sd15().with("use_karras_sigmas", json!(true));
    assert_eq!(
        SchedulerKind::from_class_name("DPMSolverMultistepScheduler", &karras).unwrap(),
        SchedulerKind::DpmSolverMultistepKarras
    );
}

#[test]
fn bad_input_is_a_typed_error() {
    assert!(matches!(SchedulerKind::from_name("heun"), Err(SchedulerError::UnknownScheduler(_))));
    assert!(matches!(
        SchedulerKind::from_class_name("FooScheduler", &sd15()),
        Err(SchedulerError::UnknownScheduler(_))
    ));
    for kind in SchedulerKind::ALL {
        let mut s = build(kind, &sd15()).unwrap();
        assert_eq!(s.set_timesteps(0).unwrap_err(), SchedulerError::ZeroSteps, "{}", kind.name());
        assert!(matches!(s.set_timesteps(1001), Err(SchedulerError::TooManySteps { .. })), "{}", kind.name());
        let bad = sd15().with("beta_schedule", json!("sigmoid-ish"));
        assert!(matches!(build(kind, &bad), Err(SchedulerError::Unsupported { field: "beta_schedule", .. })));
        let bad = sd15().with("prediction_type", json!("flow"));
        assert!(matches!(build(kind, &bad), Err(SchedulerError::Unsupported { field: "prediction_type", .. })));
    }
    let sample = sd15().with("prediction_type", json!("sample"));
    assert!(matches!(build(SchedulerKind::Pndm, &sample), Err(SchedulerError::UnsupportedPrediction { .. })));
    assert!(matches!(build(SchedulerKind::EulerAncestral, &sample), Err(SchedulerError::UnsupportedPrediction { .. })));
    assert!(matches!(
        build(SchedulerKind::Ddim, &sd15().with("num_train_timesteps", json!("many"))),
        Err(SchedulerError::BadField { .. })
    ));
    // Stepping before set_timesteps.
    let mut s = build(SchedulerKind::Euler, &sd15()).unwrap();
    let x = tensor(vec![0.0; 16], &Device::flex());
    assert!(matches!(s.step(x.clone(), x, &mut TorchRng::new(0)), Err(SchedulerError::OutOfSteps { .. })));
}

#[test]
fn python_json_non_finite_values_are_read() {
    let c = SchedulerConfig::from_json(r#"{"lambda_min_clipped": -Infinity, "note": "-Infinity \" NaN", "x": NaN}"#)
        .unwrap();
    assert_eq!(c.f64_or("lambda_min_clipped", 0.0).unwrap(), f64::NEG_INFINITY);
    assert!(c.f64_or("x", 0.0).unwrap().is_nan());
    assert_eq!(c.str_or("note", "").unwrap(), "-Infinity \" NaN");
    // `_use_default_values` keys fall back to the class defaults, as diffusers' from_config does.
    let c =
        SchedulerConfig::from_json(r#"{"timestep_spacing": "leading", "_use_default_values": ["timestep_spacing"]}"#)
            .unwrap();
    assert_eq!(c.timestep_spacing("linspace").unwrap(), TimestepSpacing::Linspace);
}

/// One step of a stochastic scheduler against its textbook formula, with the noise drawn from a
/// generator in the same state.
fn stochastic_step(kind: SchedulerKind, expected: impl Fn(&dyn Scheduler, &[f32], &[f32], &[f32]) -> Vec<f32>) {
    let device = Device::flex();
    let mut s = build(kind, &sd15()).unwrap();
    s.set_timesteps(4).unwrap();
    let mut data = TorchRng::new(3);
    let (sample, output) = (data.randn(16), data.randn(16));
    let noise = TorchRng::new(11).randn(16);
    let want = expected(s.as_ref(), &sample, &output, &noise);
    let got = values(s.step(tensor(output, &device), tensor(sample, &device), &mut TorchRng::new(11)).unwrap());
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff <= 1e-5, "{}: off by {diff}", kind.name());
}

#[test]
fn ddpm_step_is_the_posterior_mean_plus_posterior_noise() {
    let ac: Vec<f64> =
        alphas_cumprod(&betas(&sd15(), "linear", 0.0, 0.0).unwrap()).into_iter().map(f64::from).collect();
    stochastic_step(SchedulerKind::Ddpm, |s, x, eps, z| {
        let (t, prev) = (s.timesteps()[0] as usize, s.timesteps()[1] as usize);
        let (a_t, a_prev) = (ac[t], ac[prev]);
        let beta_t = 1.0 - a_t / a_prev;
        // Ho et al. (2020), eq. 7 with x0 from eq. 15 (clip_sample off).
        let var = (1.0 - a_prev) / (1.0 - a_t) * beta_t;
        (0..16)
            .map(|k| {
                let (x, e) = (x[k] as f64, eps[k] as f64);
                let x0 = (x - (1.0 - a_t).sqrt() * e) / a_t.sqrt();
                let mean = a_prev.sqrt() * beta_t / (1.0 - a_t) * x0
                    + (a_t / a_prev).sqrt() * (1.0 - a_prev) / (1.0 - a_t) * x;
                (mean + var.sqrt() * z[k] as f64) as f32
            })
            .collect()
    });
}

#[test]
fn euler_ancestral_step_splits_sigma_into_down_and_up() {
    let mut probe = EulerAncestralDiscreteScheduler::new(&sd15()).unwrap();
    probe.set_timesteps(4).unwrap();
    let (from, to) = (probe.schedule.sigmas[0] as f64, probe.schedule.sigmas[1] as f64);
    stochastic_step(SchedulerKind::EulerAncestral, move |_, x, eps, z| {
        // sigma_up^2 + sigma_down^2 = sigma_to^2, sigma_up = sigma_to * sqrt(1 - sigma_to^2 / sigma_from^2).
        let up = to * (1.0 - to * to / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        (0..16).map(|k| (x[k] as f64 + eps[k] as f64 * (down - from) + up * z[k] as f64) as f32).collect()
    });
}

#[test]
fn lcm_step_applies_the_consistency_boundary_condition() {
    let ac: Vec<f64> =
        alphas_cumprod(&betas(&sd15(), "scaled_linear", 0.00085, 0.012).unwrap()).into_iter().map(f64::from).collect();
    stochastic_step(SchedulerKind::Lcm, |s, x, eps, z| {
        let (t, prev) = (s.timesteps()[0], s.timesteps()[1] as usize);
        let a_t = ac[t as usize];
        // c_skip = sd^2 / ((10 t)^2 + sd^2), c_out = 10 t / sqrt((10 t)^2 + sd^2), sigma_data = 0.5.
        let st = 10.0 * t;
        let (c_skip, c_out) = (0.25 / (st * st + 0.25), st / (st * st + 0.25).sqrt());
        (0..16)
            .map(|k| {
                let x0 = (x[k] as f64 - (1.0 - a_t).sqrt() * eps[k] as f64) / a_t.sqrt();
                let denoised = c_out * x0 + c_skip * x[k] as f64;
                (ac[prev].sqrt() * denoised + (1.0 - ac[prev]).sqrt() * z[k] as f64) as f32
            })
            .collect()
    });
}

/// SD 1.5's `steps_offset = 1` with 1000 steps asks for timestep 1000 of 0..=999 in every scheduler that
/// indexes the training tables by timestep: a typed error (the form allows 1000 steps), not a panic;
/// 999 steps stay inside.
#[test]
fn steps_offset_past_the_last_training_timestep_is_an_error() {
    let config = sd15();
    for kind in [SchedulerKind::Ddpm, SchedulerKind::Ddim, SchedulerKind::Pndm] {
        let mut s = super::build(kind, &config).unwrap();
        let err = s.set_timesteps(1000).unwrap_err();
        assert!(
            matches!(err, SchedulerError::TimestepOutOfRange { steps: 1000, timestep: 1000, train_steps: 1000 }),
            "{kind:?}: {err:?}"
        );
        s.set_timesteps(999).unwrap();
        assert!(s.timesteps().iter().all(|&t| t <= 999.0), "{kind:?}");
    }
}
