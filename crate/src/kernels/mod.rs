//! Our own GPU kernels, written in CubeCL and run on burn's cubecl tensors (wgpu natively, WebGPU in the
//! browser). Each op returns `None` where it does not apply (a Flex tensor, a dtype it does not cover),
//! and the caller then uses burn's op.
//!
//! Where they run instead of burn's is chosen by measurement (BENCHMARKS.md, "Our kernels"), per
//! adapter: so far on SwiftShader (the headless browser's WebGPU), where all three beat burn's default
//! kernels. On lavapipe burn's autotuned kernels are faster (LLVM compiles their workgroup-memory
//! tiles well; SwiftShader's Subzero does not), and no GPU has measured them yet, so everywhere else
//! burn's run. `WEBSD_KERNELS=ours|burn` (native only) forces a choice, for benchmarks.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

pub mod attention;
pub mod conv2d;
pub mod linear;

/// WebGPU's guaranteed workgroups per dispatch dimension.
const MAX_GROUPS: usize = 65535;

static PREFERRED: AtomicBool = AtomicBool::new(false);

/// Records the wgpu adapter's name (the browser's "vendor architecture", or the driver's device name);
/// the device's creator calls this once.
pub fn set_adapter(name: &str) {
    PREFERRED.store(name.to_lowercase().contains("swiftshader"), Ordering::Relaxed);
}

/// Whether our kernels run instead of burn's on this adapter (see the module's documentation).
pub fn preferred() -> bool {
    // Asked on every convolution, linear layer and attention: the environment is read once.
    #[cfg(not(target_arch = "wasm32"))]
    {
        static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
        let forced = FORCED.get_or_init(|| match std::env::var("WEBSD_KERNELS").as_deref() {
            Ok("ours") => Some(true),
            Ok("burn") => Some(false),
            _ => None,
        });
        if let Some(forced) = *forced {
            return forced;
        }
    }
    PREFERRED.load(Ordering::Relaxed)
}

/// `t` as a contiguous cubecl tensor, when it lives on a cubecl device and has `dtype`, f32 or f16 (what
/// the kernels are written for); otherwise `None`, and the caller uses burn's op.
fn cube_tensor<const D: usize>(t: &Tensor<D>, dtype: DType) -> Option<CubeTensor> {
    if !matches!(dtype, DType::F32 | DType::F16) || t.dtype() != dtype {
        return None;
    }
    t.clone().try_into_primitive::<CubeBackend>().ok().map(into_contiguous)
}

/// An optional bias as [`cube_tensor`]: `None` when there is one that does not qualify.
fn cube_bias(bias: Option<&Tensor<1>>, dtype: DType) -> Option<Option<CubeTensor>> {
    match bias {
        Some(b) => Some(Some(cube_tensor(b, dtype)?)),
        None => Some(None),
    }
}
