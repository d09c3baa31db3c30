//! Measuring the shapes a generation recorded ([`crate::kernels::tune`]): each kind's ways are run
//! where that op lives (`tune` for the convolution, linear layer and GEGLU, [`super::attention`] and
//! [`super::normalization`] for the ops whose fallbacks are there).

use crate::kernels::tune::{self, Pending, Tuning};

/// What measuring one shape found.
#[derive(Clone, Debug)]
pub enum Found {
    Conv(tune::ConvTuning),
    Attention(tune::AttentionTuning),
    Linear(tune::LinearTuning),
    Norm(tune::NormTuning),
    Geglu(tune::GegluTuning),
}

impl Found {
    /// One line: the shape, the pick and its GFLOP/s and GB/s, each candidate's milliseconds (`-`:
    /// declined, disagreed, or raised a GPU error).
    pub fn summary(&self) -> String {
        fn line<S: std::fmt::Debug, P: std::fmt::Debug>(t: &Tuning<S, P>) -> String {
            let ms = |t: &Option<f64>| t.map_or("-".into(), |t| format!("{t:.2}"));
            let times: Vec<String> = t.times_ms.iter().map(|(p, t)| format!("{p:?} {}", ms(t))).collect();
            let rates = format!("{:.1} GFLOP/s, {:.1} GB/s", t.gflops, t.gbs);
            format!("{:?}: {:?} {rates}; ms: {}", t.shape, t.pick, times.join(", "))
        }
        match self {
            Found::Conv(t) => line(t),
            Found::Attention(t) => line(t),
            Found::Linear(t) => line(t),
            Found::Norm(t) => line(t),
            Found::Geglu(t) => line(t),
        }
    }
}

/// Measures `shape` on `device` and records its pick; `None` where burn's own output could not be
/// read (a lost device): it stays pending. `errors` counts the device's GPU errors
/// (`crate::gpu::uncaptured_errors`): a candidate during whose run one came is not picked.
pub async fn measure_pending(shape: Pending, device: &burn::tensor::Device, errors: fn() -> u32) -> Option<Found> {
    Some(match shape {
        Pending::Conv(shape) => {
            let found = tune::measure_conv(shape, device, errors).await?;
            tune::set_conv_pick(shape, found.pick);
            Found::Conv(found)
        }
        Pending::Attention(shape) => {
            let found = super::attention::measure_attention(shape, device, errors).await?;
            tune::set_attention_pick(shape, found.pick);
            Found::Attention(found)
        }
        Pending::Linear(shape) => {
            let found = tune::measure_linear(shape, device, errors).await?;
            tune::set_linear_pick(shape, found.pick);
            Found::Linear(found)
        }
        Pending::Norm(shape) => {
            let found = super::normalization::measure_norm(shape, device, errors).await?;
            tune::set_norm_pick(shape, found.pick);
            Found::Norm(found)
        }
        Pending::Geglu(shape) => {
            let found = tune::measure_geglu(shape, device, errors).await?;
            tune::set_geglu_pick(shape, found.pick);
            Found::Geglu(found)
        }
    })
}

/// Measures every shape recorded and not yet measured on `device` ([`tune::pending_on`]) and records
/// the picks; returns what it found.
pub async fn tune_pending(device: &burn::tensor::Device, errors: fn() -> u32) -> Vec<Found> {
    let mut found = Vec::new();
    for shape in tune::pending_on(device) {
        found.extend(measure_pending(shape, device, errors).await);
    }
    found
}
