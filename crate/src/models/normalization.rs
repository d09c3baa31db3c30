//! The normalizations of the U-Net, the VAE and CLIP (diffusers' `normalization.py`): GroupNorm
//! (with the SiLU that follows it in every ResNet block fused where our kernel runs) and LayerNorm.
//! Where [`crate::kernels::choice`] says so, each is one kernel ([`crate::kernels::norm`]) instead of
//! burn's 8-16 launches; elsewhere burn's ops, in f32 on an f16 device.

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Distribution, FloatDType, Tensor};

use crate::kernels::norm::Layout;
use crate::kernels::tune::{self, NormPick, NormShape, NormTuning, Tuning};
use crate::weights::{LoadError, TensorLoader, TensorSource};

/// torch's `nn.LayerNorm` over the last dimension (burn's keeps its epsilon private, and the kernel
/// needs it).
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub epsilon: f64,
}

impl LayerNorm {
    /// torch's `nn.LayerNorm(d, eps)` at `prefix` (`weight` and `bias`).
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        d: usize,
        epsilon: f64,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            gamma: w.param(&format!("{prefix}.weight"), [d])?,
            beta: w.param(&format!("{prefix}.bias"), [d])?,
            epsilon,
        })
    }

    /// The kernels measured for the shape on this device ([`crate::kernels::tune`]), else ours where
    /// [`crate::kernels::choice`] says so, else burn's.
    ///
    /// # Shapes
    /// - x: `[..., features]`, returned in the same shape
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let measured = || {
            let features = x.dims()[D - 1];
            let rows = x.shape().num_elements() / features.max(1);
            tune::norm_pick(NormShape::Layer { rows, features, f16: x.dtype() == DType::F16 })
        };
        let pick = crate::kernels::is_cube(&x).then(measured).flatten().unwrap_or_else(default_pick);
        self.run(pick, x.clone()).unwrap_or_else(|| self.run(NormPick::Burn, x).expect("burn's runs every shape"))
    }

    /// [`Self::forward`] by `pick` (`None` where our kernel declines).
    pub fn run<const D: usize>(&self, pick: NormPick, x: Tensor<D>) -> Option<Tensor<D>> {
        let (gamma, beta) = (self.gamma.val(), self.beta.val());
        if let NormPick::Ours(layout) = pick {
            return crate::kernels::norm::layer_norm(&x, Some((&gamma, &beta)), self.epsilon, layout);
        }
        // As burn's LayerNorm: in f32 on an f16 device (sums of squares overflow f16).
        let dtype = x.dtype();
        if dtype == DType::F16 {
            let f32 = |t: Tensor<1>| t.cast(FloatDType::F32);
            let out =
                burn::tensor::module::layer_norm(x.cast(FloatDType::F32), f32(gamma), Some(f32(beta)), self.epsilon);
            return Some(out.cast(FloatDType::F16));
        }
        Some(burn::tensor::module::layer_norm(x, gamma, Some(beta), self.epsilon))
    }
}

/// Where nothing was measured: our kernel in the device's layout where [`crate::kernels::choice`]
/// says so, else burn's ops.
fn default_pick() -> NormPick {
    match crate::kernels::choice().norm {
        true => NormPick::Ours(Layout::for_device()),
        false => NormPick::Burn,
    }
}

/// GroupNorm as burn's (two-pass: mean, then the mean of squared deviations), with every reduction over
/// a short axis: the statistics are reduced over each row (`w`) first, then over the group's rows.
///
/// burn 0.22's GroupNorm reduces a whole group in one `mean_dim`, which on wgpu (lavapipe) returns
/// garbage for long groups: `[1, 960, 64, 64]` (122,880 values per group, the U-Net's last up block at
/// 512 px) came out 1.6e3 off with no device error, while 40,960 per group was exact.
///
/// Where our kernels run, one kernel ([`crate::kernels::norm::group_norm`]).
pub fn group_norm(norm: &burn::nn::GroupNorm, x: Tensor<4>) -> Tensor<4> {
    group_norm_then(norm, x, false)
}

/// [`group_norm`], then SiLU (every ResNet block's and the output's), fused where our kernel runs.
pub fn group_norm_silu(norm: &burn::nn::GroupNorm, x: Tensor<4>) -> Tensor<4> {
    group_norm_then(norm, x, true)
}

fn group_norm_then(norm: &burn::nn::GroupNorm, x: Tensor<4>, then_silu: bool) -> Tensor<4> {
    let measured = || {
        let [batch, channels, h, w] = x.dims();
        let (groups, f16) = (norm.num_groups, x.dtype() == DType::F16);
        tune::norm_pick(NormShape::Group { batch, channels, pixels: h * w, groups, silu: then_silu, f16 })
    };
    let pick = crate::kernels::is_cube(&x).then(measured).flatten().unwrap_or_else(default_pick);
    run_group_norm(pick, norm, x.clone(), then_silu)
        .unwrap_or_else(|| run_group_norm(NormPick::Burn, norm, x, then_silu).expect("burn's runs every shape"))
}

/// [`group_norm`] (then SiLU where `then_silu`) by `pick` (`None` where our kernel declines).
pub fn run_group_norm(pick: NormPick, norm: &burn::nn::GroupNorm, x: Tensor<4>, then_silu: bool) -> Option<Tensor<4>> {
    if let NormPick::Ours(layout) = pick {
        let (gamma, beta) = (norm.gamma.as_ref().map(Param::val), norm.beta.as_ref().map(Param::val));
        let affine = gamma.as_ref().zip(beta.as_ref());
        return crate::kernels::norm::group_norm(&x, norm.num_groups, affine, norm.epsilon, then_silu, layout);
    }
    let out = GroupStats::new(norm.num_groups, std::slice::from_ref(&x), norm.epsilon).normalize(norm, x);
    Some(if then_silu { silu(out) } else { out })
}

/// Measures burn's ops and our kernel in both layouts for a normalization of `shape` on `device`, on
/// random inputs and affine parameters, as [`tune::measure_conv`].
pub async fn measure_norm(shape: NormShape, device: &burn::tensor::Device, errors: fn() -> u32) -> Option<NormTuning> {
    let dtype = if shape.f16() { FloatDType::F16 } else { FloatDType::F32 };
    let normal = Distribution::Normal(0.0, 1.0);
    let random = |n: usize| Tensor::<1>::random([n], normal, device).cast(dtype);
    let candidates = [NormPick::Burn, NormPick::Ours(Layout::Workgroup), NormPick::Ours(Layout::Lane)];
    let found = match shape {
        NormShape::Group { batch, channels, pixels, groups, silu, .. } => {
            let mut norm = burn::nn::GroupNormConfig::new(groups, channels).init(device);
            norm.gamma = Some(Param::from_tensor(random(channels)));
            norm.beta = Some(Param::from_tensor(random(channels)));
            let x = Tensor::<4>::random([batch, channels, pixels, 1], normal, device).cast(dtype);
            tune::measure(&candidates, |pick| run_group_norm(pick, &norm, x.clone(), silu), shape.f16(), errors).await?
        }
        NormShape::Layer { rows, features, .. } => {
            let norm = LayerNorm {
                gamma: Param::from_tensor(random(features)),
                beta: Param::from_tensor(random(features)),
                epsilon: 1e-5,
            };
            let x = Tensor::<2>::random([rows, features], normal, device).cast(dtype);
            tune::measure(&candidates, |pick| norm.run(pick, x.clone()), shape.f16(), errors).await?
        }
    };
    Some(Tuning::new(shape, found))
}

/// `t` in f32 (a no-op on f32 devices).
fn to_f32(t: Tensor<4>) -> Tensor<4> {
    if t.dtype() == DType::F32 { t } else { t.cast(FloatDType::F32) }
}

/// Mean and standard deviation of each (batch, group), over one tensor or over row bands of one image.
pub(crate) struct GroupStats {
    groups: usize,
    /// `[batch, groups, 1, 1]`
    mean: Tensor<4>,
    std: Tensor<4>,
}

impl GroupStats {
    fn rows(t: &Tensor<4>, groups: usize) -> Tensor<4> {
        let [b, c, h, w] = t.dims();
        t.clone().reshape([b, groups, c / groups * h, w])
    }

    /// Statistics over all `parts` together (row bands of one image, or a single tensor). Always in
    /// f32: on an f16 device, sums of squares over a group overflow f16's 65504.
    pub(crate) fn new(groups: usize, parts: &[Tensor<4>], epsilon: f64) -> Self {
        let count: usize = parts.iter().map(|t| t.dims()[1..].iter().product::<usize>() / groups).sum();
        let total = |ts: Vec<Tensor<4>>| ts.into_iter().reduce(|a, b| a + b).expect("at least one part");
        // Sums over w, then over the group's rows; divided once by the count.
        let sum = |t: Tensor<4>| t.sum_dim(3).sum_dim(2);
        let rows = |t: &Tensor<4>| Self::rows(&to_f32(t.clone()), groups);
        let mean = total(parts.iter().map(|t| sum(rows(t))).collect()) / count as f32;
        let var = total(parts.iter().map(|t| sum((rows(t) - mean.clone()).square())).collect()) / count as f32;
        Self { groups, mean, std: (var + epsilon).sqrt() }
    }

    /// `(x - mean) / std * gamma + beta` for one tensor (or band) of the image the stats came from, in
    /// f32, returned in `x`'s dtype.
    pub(crate) fn normalize(&self, norm: &burn::nn::GroupNorm, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let dtype = x.dtype();
        let x = to_f32(x);
        let normalized = ((Self::rows(&x, self.groups) - self.mean.clone()) / self.std.clone()).reshape([b, c, h, w]);
        let normalized = if dtype == DType::F16 { normalized.cast(FloatDType::F16) } else { normalized };
        match (&norm.gamma, &norm.beta) {
            (Some(g), Some(beta)) => normalized * g.val().reshape([1, c, 1, 1]) + beta.val().reshape([1, c, 1, 1]),
            _ => normalized,
        }
    }
}
