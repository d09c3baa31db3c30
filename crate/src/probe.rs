//! A small conv2d + group norm + attention graph with deterministic weights: the first slice through
//! the whole stack. It runs unchanged on Flex (CPU), native wgpu and WebGPU in a worker, so comparing
//! the devices' outputs checks that each backend computes the ops the U-Net is built from.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::Error;
use crate::protocol::{SELF_TEST_TOLERANCE, SelfTestReport};

/// Configuration of [`Probe`].
#[derive(Config, Debug)]
pub struct ProbeConfig {
    /// Channels of the input image.
    #[config(default = 4)]
    pub in_channels: usize,
    /// Channels after the convolution (the attention width).
    #[config(default = 32)]
    pub channels: usize,
    /// Groups of the group norm.
    #[config(default = 8)]
    pub groups: usize,
    /// Attention heads; `channels` must be divisible by it.
    #[config(default = 4)]
    pub heads: usize,
    /// Seed of the deterministic weights, so every device builds identical parameters.
    #[config(default = 7)]
    pub seed: u64,
}

/// conv3x3 -> GroupNorm -> SiLU -> multi-head self-attention over the pixels -> residual.
#[derive(Module, Debug)]
pub struct Probe {
    conv: Conv2d,
    norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    heads: usize,
}

/// `n` values uniform in `[-scale, scale)` from splitmix64: bit-identical on every platform, unlike
/// anything built on `sin` or an OS RNG.
pub fn deterministic_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // 24 random bits -> exactly representable f32 in [0, 1).
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            (unit * 2.0 - 1.0) * scale
        })
        .collect()
}

fn param<const D: usize>(shape: [usize; D], seed: u64, scale: f32, device: &Device) -> Param<Tensor<D>> {
    let n = shape.iter().product();
    let data = TensorData::new(deterministic_values(n, seed, scale), shape);
    Param::from_tensor(Tensor::from_data(data, device))
}

impl ProbeConfig {
    /// Builds the probe with its deterministic weights on `device`.
    pub fn init(&self, device: &Device) -> Probe {
        let (c_in, c) = (self.in_channels, self.channels);
        let mut conv =
            Conv2dConfig::new([c_in, c], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device);
        conv.weight = param([c, c_in, 3, 3], self.seed, (1.0 / (c_in * 9) as f32).sqrt(), device);
        conv.bias = Some(param([c], self.seed + 1, 0.1, device));

        let mut norm = GroupNormConfig::new(self.groups, c).init(device);
        norm.gamma = Some(param([c], self.seed + 2, 0.5, device).map(|g| g + 1.0));
        norm.beta = Some(param([c], self.seed + 3, 0.2, device));

        let linear = |offset: u64| {
            let mut l = LinearConfig::new(c, c).init(device);
            l.weight = param([c, c], self.seed + offset, (1.0 / c as f32).sqrt(), device);
            l.bias = Some(param([c], self.seed + offset + 1, 0.1, device));
            l
        };
        Probe { conv, norm, to_q: linear(10), to_k: linear(20), to_v: linear(30), heads: self.heads }
    }

    /// A deterministic input for [`Probe::forward`] of shape `[batch, in_channels, height, width]`.
    pub fn input(&self, shape: [usize; 4], device: &Device) -> Tensor<4> {
        assert_eq!(shape[1], self.in_channels, "input channels");
        let data = TensorData::new(deterministic_values(shape.iter().product(), self.seed + 100, 1.0), shape);
        Tensor::from_data(data, device)
    }
}

impl Probe {
    /// # Shapes
    /// - input: `[batch, in_channels, height, width]`
    /// - output: `[batch, channels, height, width]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = silu(self.norm.forward(self.conv.forward(input)));
        let [b, c, h, w] = x.dims();
        let (heads, head_dim) = (self.heads, c / self.heads);

        // [b, c, h, w] -> [b, h*w, c]: the pixels are the attention sequence, as in Transformer2DModel.
        let tokens = x.clone().reshape([b, c, h * w]).swap_dims(1, 2);
        let split = |t: Tensor<3>| t.reshape([b, h * w, heads, head_dim]).swap_dims(1, 2);
        let q = split(self.to_q.forward(tokens.clone()));
        let k = split(self.to_k.forward(tokens.clone()));
        let v = split(self.to_v.forward(tokens));
        let attended = attention(q, k, v, None, None, AttentionModuleOptions::default());

        let out = attended.swap_dims(1, 2).reshape([b, h * w, c]).swap_dims(1, 2).reshape([b, c, h, w]);
        x + out
    }
}

/// Runs the probe on `gpu` and on Flex (CPU) and compares them; `now_ms` is the platform's clock.
/// Reads back asynchronously, which is the only way that works in browsers (and works natively).
pub async fn self_test(gpu: &Device, now_ms: impl Fn() -> f64) -> Result<SelfTestReport, Error> {
    let shape = [2, 4, 16, 16];
    let t0 = now_ms();
    let on_gpu = run_probe(gpu, shape).await?;
    let t1 = now_ms();
    let on_cpu = run_probe(&Device::flex(), shape).await?;
    let t2 = now_ms();
    let max_abs_diff = max_abs_diff(&on_gpu, &on_cpu);
    let gpu_errors = crate::gpu::uncaptured_errors();
    // A device computing in f16 (WebGPU with shader-f16) is judged at f16 precision.
    let tolerance = if gpu.settings().float_dtype == burn::tensor::FloatDType::F16 {
        crate::protocol::SELF_TEST_TOLERANCE_F16
    } else {
        SELF_TEST_TOLERANCE
    };
    Ok(SelfTestReport {
        shape: shape.to_vec(),
        max_abs_diff,
        tolerance,
        // A device error means some kernel did not run as written: a later result could be garbage.
        passed: max_abs_diff <= tolerance && gpu_errors == 0,
        gpu_ms: t1 - t0,
        cpu_ms: t2 - t1,
        gpu_errors,
    })
}

/// The probe's output on `device` for the deterministic input of `shape`.
pub async fn run_probe(device: &Device, shape: [usize; 4]) -> Result<Vec<f32>, Error> {
    let config = ProbeConfig::new();
    let out = config.init(device).forward(config.input(shape, device));
    let data = out.into_data_async().await.map_err(|e| Error::Readback(format!("{e:?}")))?;
    data.try_to_vec::<f32>().map_err(|e| Error::Readback(format!("{e:?}")))
}

/// Largest absolute difference between two equally long slices (NaN anywhere counts as infinite).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared tensors differ in size");
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.is_nan() || y.is_nan() { f32::INFINITY } else { (x - y).abs() })
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_values_are_in_range_and_reproducible() {
        let a = deterministic_values(1000, 3, 0.5);
        assert_eq!(a, deterministic_values(1000, 3, 0.5));
        assert_ne!(a, deterministic_values(1000, 4, 0.5));
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn probe_on_flex_has_expected_shape_and_finite_values() {
        let device = Device::flex();
        let config = ProbeConfig::new();
        let out = config.init(&device).forward(config.input([2, 4, 8, 8], &device));
        assert_eq!(out.dims(), [2, 32, 8, 8]);
        let values = out.into_data().try_to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
        // Group norm output is not all zero: the graph really ran.
        assert!(values.iter().map(|v| v.abs()).sum::<f32>() > 1.0);
    }

    /// The slice natively: wgpu (Vulkan; lavapipe on CI machines) against Flex.
    #[test]
    fn probe_on_native_wgpu_matches_flex() {
        let (gpu, info) = crate::gpu::wgpu_device().expect("a wgpu adapter (install mesa-vulkan-drivers)");
        eprintln!("native wgpu adapter: {info:?}");
        let start = std::time::Instant::now();
        let clock = || start.elapsed().as_secs_f64() * 1e3;
        let report = pollster::block_on(self_test(&gpu, clock)).unwrap();
        eprintln!("probe wgpu vs flex: {report:?}");
        assert!(report.max_abs_diff <= 1e-4, "wgpu vs flex max abs diff {}", report.max_abs_diff);
        assert!(report.passed);
        assert_eq!(report.gpu_errors, 0, "wgpu validation errors natively");
    }
}
