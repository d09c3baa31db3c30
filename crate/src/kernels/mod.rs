//! Our own GPU kernels, written in CubeCL and run on burn's cubecl tensors (wgpu natively, WebGPU in the
//! browser). Each op returns `None` where it does not apply (a Flex tensor, a dtype it does not cover),
//! and the caller then uses burn's op.
//!
//! Where they run instead of burn's is chosen by measurement (BENCHMARKS.md, "Our kernels"), per op
//! and adapter ([`Choice::for_adapter`]). SwiftShader (the headless browser's WebGPU) and lavapipe run
//! shaders on the CPU, invocations as SIMD lanes; there the convolution and the linear layer are our
//! lane kernels without workgroup memory ([`conv2d::conv2d_blocked`], [`linear::linear_blocked`]),
//! faster than our implicit GEMM and than burn's kernels (autotuned on lavapipe), GroupNorm (+ SiLU)
//! and LayerNorm are one kernel each ([`norm`]) instead of burn's 8-16 launches, GEGLU one ([`geglu`])
//! instead of 8, the convolution and linear kernels add biases and residuals in their last step
//! ([`conv2d::Epilogue`]: wherever they run), and on SwiftShader
//! our attention beats burn's; on lavapipe the attention and linear layers under 64 rows stay burn's.
//! Everywhere else burn's run, and each convolution's, attention's, linear layer's, normalization's and
//! GEGLU's kernels are measured on the device itself ([`tune`]: burn's ops against our kernels, per
//! shape). `WEBSD_KERNELS` (native only) forces
//! a choice for benchmarks: `ours`, `burn`, or a comma list of `conv` (the implicit GEMM),
//! `conv-lanes`, `attention`, `linear`, `norm`, `geglu`, `tune` (measure each op's kernels on the
//! device, as on adapters not measured here: [`tune`]); `WEBSD_CONV_WORKGROUPS=N` tiles the implicit GEMM's
//! convolution for a GPU that wants N workgroups in flight ([`conv2d::Tiling::for_workgroups`]).

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

pub mod attention;
pub mod conv2d;
pub mod geglu;
pub mod linear;
pub mod norm;
pub mod tune;

/// WebGPU's guaranteed workgroups per dispatch dimension.
const MAX_GROUPS: usize = 65535;

/// A dispatch of `items` one-per-lane work items in workgroups of `lanes`: x up to [`MAX_GROUPS`], the
/// rest in y (a kernel finds its item as `(y * x_count + x) * lanes + lane` and skips those past the end).
fn grid_1d(items: usize, lanes: usize) -> burn_cubecl::cubecl::CubeCount {
    let groups = items.div_ceil(lanes);
    let groups_x = groups.min(MAX_GROUPS);
    burn_cubecl::cubecl::CubeCount::Static(groups_x as u32, groups.div_ceil(groups_x) as u32, 1)
}
/// Which of our kernels run on a device, and how the convolution is tiled there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub conv: bool,
    pub attention: bool,
    pub linear: bool,
    /// GroupNorm (+ SiLU) and LayerNorm as one kernel each ([`norm`]).
    pub norm: bool,
    /// The feed-forward's GEGLU as one kernel ([`geglu`]).
    pub geglu: bool,
    /// Output pixels (batch x height x width) below which burn's convolution runs instead of ours.
    pub conv_min_pixels: usize,
    /// Output channels below which burn's convolution runs instead of ours.
    pub conv_min_channels: usize,
    /// Workgroups the convolution's tiling aims for ([`conv2d::Tiling::for_workgroups`]); 0 keeps
    /// [`conv2d::Tiling::SMALL`] for every shape.
    pub conv_workgroups: usize,
    /// Our kernels for devices that run shaders on a CPU (no workgroup memory; invocations are SIMD
    /// lanes): the convolution as [`conv2d::conv2d_blocked`] at every size instead of the implicit GEMM
    /// and burn's direct kernel (`conv_min_*` then do not apply), and where `linear`, the linear
    /// layer as [`linear::linear_blocked`] from `lane_min_rows` rows (burn's below them).
    pub lanes: bool,
    /// Accumulators per lane in the lane kernels ([`conv2d::Block::for_shape`],
    /// [`linear::lane_block`]): larger blocks run faster and compile slower.
    pub lane_accumulators: usize,
    /// Rows from which the lane kernel runs a linear layer.
    pub lane_min_rows: usize,
    /// Registers (f32 values) for a lane's queries and accumulators in our attention, which sets
    /// its queries per lane ([`attention::queries_per_lane`]; 0: one).
    pub attention_registers: usize,
    /// Measure the convolutions, attentions, linear layers, normalizations and GEGLUs on the device
    /// and run the fastest kernels for each shape ([`tune`]): for adapters whose choice nobody has
    /// measured.
    pub tune: bool,
}

impl Choice {
    /// burn's ops everywhere.
    pub const BURN: Choice = Choice {
        conv: false,
        attention: false,
        linear: false,
        norm: false,
        geglu: false,
        conv_min_pixels: 0,
        conv_min_channels: 0,
        conv_workgroups: 0,
        lanes: false,
        lane_accumulators: conv2d::Block::LLVMPIPE_ACCUMULATORS,
        lane_min_rows: 0,
        attention_registers: 0,
        tune: false,
    };

    /// The choice for a wgpu adapter's name (the browser's "vendor architecture", or the driver's
    /// device name), from the measurements in BENCHMARKS.md.
    pub fn for_adapter(name: &str) -> Choice {
        if name.to_lowercase().contains("swiftshader") {
            // The convolution: `conv2d_lanes` with blocks of 64 accumulators (native SwiftShader, the
            // tiny model, BENCHMARKS.md "A convolution for CPU devices"): U-Net call 0.76x and VAE
            // decode ~0.6x the time of the implicit GEMM with burn's direct kernel below it, and the
            // first calls 0.8x (128 accumulators: 0.7x warm but first calls 1.05x; 256: 1.8x).
            // The linear layer: `linear_lanes` took 0.31-0.84x the time of the tiled implicit GEMM
            // and 0.17-0.43x the row kernel's at the U-Net's shapes, 32 to 2048 rows
            // (`op_bench 32 wgpu-capped - - all 10`, BENCHMARKS.md).
            // Attention with up to 64 registers of queries and accumulators a lane (4 queries of the
            // tiny model's 8-wide heads): 0.59-0.67x the time of one query a lane, whole tiny U-Net
            // calls ~0.89x.
            // The implicit GEMM's tiling is kept for `WEBSD_KERNELS=conv` (4 workgroups measured best).
            return Choice {
                conv: true,
                attention: true,
                linear: true,
                norm: true,
                geglu: true,
                conv_workgroups: 4,
                lanes: true,
                lane_accumulators: 64,
                attention_registers: 64,
                ..Choice::BURN
            };
        }
        if name.to_lowercase().contains("llvmpipe") {
            // `op_bench 32 wgpu - - conv` (BENCHMARKS.md): the lane kernel took 0.27-0.81x the time
            // of burn's autotuned kernels at SD's four 3x3 shapes; the implicit GEMM 2.0-5.7x. The
            // lane linear kernel 0.43-0.95x burn's matmul from 256 rows (`... all 10`), 1.9x at 32.
            return Choice {
                conv: true,
                linear: true,
                norm: true,
                geglu: true,
                lanes: true,
                lane_min_rows: 64,
                ..Choice::BURN
            };
        }
        // Not measured here: burn's kernels, and each op's kernels measured on the device, the lane
        // kernels among them in blocks a GPU's registers hold.
        Choice { tune: true, lane_accumulators: conv2d::Block::UNMEASURED_ACCUMULATORS, ..Choice::BURN }
    }

    /// `WEBSD_KERNELS` and `WEBSD_CONV_WORKGROUPS` over `self` (see the module's documentation).
    #[cfg(not(target_arch = "wasm32"))]
    fn forced(mut self, kernels: Option<&str>, workgroups: Option<&str>) -> Choice {
        if let Some(list) = kernels {
            let ops: Vec<&str> = list.split(',').map(str::trim).collect();
            let all = ops.contains(&"ours");
            let (gemm, lanes) = (ops.contains(&"conv"), ops.contains(&"conv-lanes"));
            self.conv = all || gemm || lanes;
            // `conv` and `conv-lanes` name the kernel; `ours` keeps the adapter's.
            if gemm || lanes {
                self.lanes = lanes;
            }
            self.attention = all || ops.contains(&"attention");
            self.linear = all || ops.contains(&"linear");
            self.norm = all || ops.contains(&"norm");
            self.geglu = all || ops.contains(&"geglu");
            self.tune = ops.contains(&"tune");
            self.conv_min_pixels = 0;
            self.conv_min_channels = 0;
        }
        if let Some(n) = workgroups.and_then(|n| n.parse().ok()) {
            self.conv_workgroups = n;
        }
        self
    }
}

static CHOICE: RwLock<Choice> = RwLock::new(Choice::BURN);

/// Records the wgpu adapter's name and the device's largest buffer; the device's creator calls this
/// before any kernel runs on it (again for a device made after a loss: [`tune::set_adapter`]).
pub fn set_adapter(name: &str, max_buffer_bytes: u64) {
    tune::set_adapter(name);
    let choice = Choice::for_adapter(name);
    #[cfg(not(target_arch = "wasm32"))]
    let choice = choice
        .forced(std::env::var("WEBSD_KERNELS").ok().as_deref(), std::env::var("WEBSD_CONV_WORKGROUPS").ok().as_deref());
    *CHOICE.write().unwrap_or_else(|e| e.into_inner()) = choice;
    MAX_BUFFER_BYTES.store(max_buffer_bytes, Ordering::Relaxed);
}

/// The device's largest buffer, as its creator gave it ([`set_adapter`]): the split-K partial sums
/// stay within it (none before it is set).
static MAX_BUFFER_BYTES: AtomicU64 = AtomicU64::new(0);

fn max_buffer_bytes() -> usize {
    MAX_BUFFER_BYTES.load(Ordering::Relaxed) as usize
}

/// Which of our kernels run on this device (see the module's documentation).
pub fn choice() -> Choice {
    *CHOICE.read().unwrap_or_else(|e| e.into_inner())
}

/// The convolution's tiling for this device and shape (`depth` is `c_in * kh * kw`).
pub fn conv_tiling(c_out: usize, pixels: usize, depth: usize) -> conv2d::Tiling {
    match choice().conv_workgroups {
        0 => conv2d::Tiling::SMALL,
        n => conv2d::Tiling::for_workgroups(c_out, pixels, depth, n),
    }
}

/// `t` as a contiguous cubecl tensor, when it lives on a cubecl device and has `dtype`, f32 or f16 (what
/// the kernels are written for); otherwise `None`, and the caller uses burn's op.
fn cube_tensor<const D: usize>(t: &Tensor<D>, dtype: DType) -> Option<CubeTensor> {
    if !matches!(dtype, DType::F32 | DType::F16) || t.dtype() != dtype {
        return None;
    }
    t.clone().try_into_primitive::<CubeBackend>().ok().map(into_contiguous)
}

/// Whether `t` lives on a cubecl device (where our kernels can run).
pub fn is_cube<const D: usize>(t: &Tensor<D>) -> bool {
    t.clone().try_into_primitive::<CubeBackend>().is_ok()
}

/// An optional bias as [`cube_tensor`]: `None` when there is one that does not qualify.
fn cube_bias(bias: Option<&Tensor<1>>, dtype: DType) -> Option<Option<CubeTensor>> {
    match bias {
        Some(b) => Some(Some(cube_tensor(b, dtype)?)),
        None => Some(None),
    }
}
