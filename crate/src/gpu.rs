//! Acquiring the wgpu device (WebGPU in the browser, Vulkan/Metal/DX12 natively) and describing what
//! the adapter gave us: its name, whether `shader-f16` is available, and the limits the device got.
//!
//! burn's wgpu runtime can be initialised only once per process (or wasm instance), so the device is
//! cached here and every caller shares it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use burn::tensor::wgpu::{WgpuSetup, wgpu};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The limits of the logical device burn created (cubecl requests the adapter's own limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuLimits {
    /// Largest buffer the device can allocate, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage buffer a shader can bind, in bytes: the one that bounds our tensors.
    pub max_storage_buffer_binding_size: u64,
    /// Storage buffers one compute shader may bind.
    pub max_storage_buffers_per_shader_stage: u32,
    /// Workgroup shared memory, in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations in one workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Workgroup size along x.
    pub max_compute_workgroup_size_x: u32,
    /// Workgroups per dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
}

/// What the page shows about the GPU, and what the engine uses to pick f16 or f32 weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    /// Adapter name as the driver/browser reports it.
    pub adapter: String,
    /// Graphics API in use (`BrowserWebGpu`, `Vulkan`, ...).
    pub backend: String,
    /// Adapter type (`DiscreteGpu`, `Cpu` for SwiftShader/lavapipe, ...).
    pub device_type: String,
    /// Driver name and version, where the platform reports them.
    pub driver: String,
    /// Whether the device has the `shader-f16` feature (f16 weights and compute).
    pub shader_f16: bool,
    /// The device's limits.
    pub limits: GpuLimits,
}

impl GpuInfo {
    /// What kernels measured on this adapter are kept under ([`crate::kernels::tune`]): its name, API,
    /// driver (a new driver may compile the kernels differently, so it measures again; a browser
    /// reports none, and the worker adds the browser's user agent) and the kernels' version.
    pub fn tuning_key(&self) -> String {
        let version = crate::kernels::tune::VERSION;
        format!("{} | {} | {} | kernels v{version}", self.adapter, self.backend, self.driver)
    }

    fn from_setup(setup: &WgpuSetup) -> Self {
        let info = setup.adapter.get_info();
        let limits = setup.device.limits();
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            adapter: info.name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver,
            shader_f16: setup.device.features().contains(wgpu::Features::SHADER_F16),
            limits: GpuLimits {
                max_buffer_size: limits.max_buffer_size,
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size as u64,
                max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
                max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
                max_compute_workgroup_size_x: limits.max_compute_workgroup_size_x,
                max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            },
        }
    }
}

static UNCAPTURED_ERRORS: AtomicU32 = AtomicU32::new(0);

/// The most recent uncaptured errors, numbered in order, for [`errors_since`] to name the first.
static RECENT_ERRORS: Mutex<Vec<(u32, Error)>> = Mutex::new(Vec::new());
const RECENT_KEPT: usize = 8;

/// wgpu errors that no error scope caught, since start-up.
///
/// cubecl's own handler panics on them. In a browser that panic happens inside a JS callback and traps
/// the worker. The engine records them instead, and work that began before one fails with its typed
/// error ([`errors_since`]); native tests require zero.
pub fn uncaptured_errors() -> u32 {
    UNCAPTURED_ERRORS.load(Ordering::Relaxed)
}

/// The first GPU error recorded since `mark` (a value of [`uncaptured_errors`] taken before the work),
/// as the typed error that ends the work: a result computed after one cannot be trusted.
pub fn errors_since(mark: u32) -> Result<(), Error> {
    if uncaptured_errors() <= mark {
        return Ok(());
    }
    let recent = RECENT_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    // The oldest kept one when more came than are kept.
    let first = recent.iter().find(|(seq, _)| *seq >= mark).or(recent.first());
    Err(first.map(|(_, e)| e.clone()).unwrap_or_else(|| Error::GpuValidation("an uncaptured GPU error".into())))
}

/// The engine's error for a wgpu error. An internal error is the implementation running out of
/// something the limits do not state (WebGPU's `GPUInternalError`): the cure is the one for memory.
pub fn classify(error: &wgpu::Error) -> Error {
    match error {
        wgpu::Error::OutOfMemory { .. } => Error::GpuOom(error.to_string()),
        wgpu::Error::Validation { description, .. } => Error::GpuValidation(description.clone()),
        wgpu::Error::Internal { description, .. } => Error::GpuOom(format!("internal error: {description}")),
    }
}

fn warn(message: &str) {
    #[cfg(target_arch = "wasm32")]
    web_sys::console::warn_1(&message.into());
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{message}");
}

fn install_error_handler(setup: &WgpuSetup) {
    setup.device.on_uncaptured_error(Arc::new(|error| {
        let seen = UNCAPTURED_ERRORS.fetch_add(1, Ordering::Relaxed);
        {
            let mut recent = RECENT_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_KEPT {
                recent.remove(0);
            }
            recent.push((seen, classify(&error)));
        }
        // The first few in full; a failing autotune candidate repeats the same error many times.
        if seen < 3 {
            warn(&format!("websd: uncaptured wgpu error: {error}"));
        } else if seen == 3 {
            warn("websd: further uncaptured wgpu errors are only counted");
        }
    }));
}

#[cfg(not(target_arch = "wasm32"))]
fn init_error(err: burn::tensor::wgpu::WgpuInitError) -> Error {
    match err {
        burn::tensor::wgpu::WgpuInitError::AdapterUnavailable { message, .. } => Error::NoGpu(message),
        other => Error::GpuInit(other.to_string()),
    }
}

#[cfg(not(target_arch = "wasm32"))]
static WGPU: std::sync::OnceLock<Result<(Device, GpuInfo), Error>> = std::sync::OnceLock::new();
/// The wgpu device under burn's (for [`provoke_validation_error`]).
#[cfg(not(target_arch = "wasm32"))]
static RAW: std::sync::OnceLock<wgpu::Device> = std::sync::OnceLock::new();

/// The shared wgpu device, initialised on first use (native: blocking).
///
/// A failed initialisation is remembered: burn cannot retry it in the same process.
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu_device() -> Result<(Device, GpuInfo), Error> {
    WGPU.get_or_init(|| {
        Device::wgpu_options()
            .init_with_setup()
            .map(|(device, setup)| {
                install_error_handler(&setup);
                let _ = RAW.set(setup.device.clone());
                let info = GpuInfo::from_setup(&setup);
                crate::kernels::set_adapter(&info.adapter, MAX_BUFFER_BYTES);
                (device, info)
            })
            .map_err(init_error)
    })
    .clone()
}

/// Runs wasm's static constructors (cubecl registers ~4,900 items through `inventory`), once.
///
/// wasm-ld takes a module that never calls `__wasm_call_ctors` for a command and wraps every export in
/// a call to it. wasm-bindgen's glue calls exports for each JS value and string it hands to wasm
/// (`__externref_table_alloc`, `__wbindgen_malloc`), so every crossing re-ran all the constructors,
/// 0.3 ms a time: a progress event cost 6 ms, loading SD 1.5 spent 7 s on them. Referencing it here
/// removes the wrappers, so it must run before cubecl is used: the worker's `start` and
/// [`wgpu_device`] (the browser tests' entry) call this.
#[cfg(target_arch = "wasm32")]
pub fn run_static_constructors() {
    unsafe extern "C" {
        fn __wasm_call_ctors();
    }
    static DONE: std::sync::Once = std::sync::Once::new();
    // SAFETY: synthesised by wasm-ld; `Once` keeps it to one call, as constructors expect.
    DONE.call_once(|| unsafe { __wasm_call_ctors() });
}

#[cfg(target_arch = "wasm32")]
struct WebGpu {
    device: Device,
    info: GpuInfo,
    /// The wgpu device under burn's, to destroy it on request (`LoseDevice`).
    raw: wgpu::Device,
    /// Set by the device-lost callback.
    lost: Arc<std::sync::Mutex<Option<String>>>,
}

#[cfg(target_arch = "wasm32")]
thread_local! {
    static WGPU: std::cell::RefCell<Option<WebGpu>> = const { std::cell::RefCell::new(None) };
}

/// Why the current WebGPU device was lost, if it was.
#[cfg(target_arch = "wasm32")]
pub fn device_lost() -> Option<String> {
    WGPU.with(|c| c.borrow().as_ref().and_then(|g| g.lost.lock().ok()?.clone()))
}

/// The shared WebGPU device, initialised asynchronously on first use (synchronous initialisation
/// panics in browsers: it would have to block on a condvar). After a device loss, a new device is
/// created on a fresh adapter and registered with burn under a new id; models on the old one must be
/// loaded again.
#[cfg(target_arch = "wasm32")]
pub async fn wgpu_device() -> Result<(Device, GpuInfo), Error> {
    run_static_constructors();
    let cached = WGPU.with(|c| c.borrow().as_ref().map(|g| (g.device.clone(), g.info.clone(), g.lost.clone())));
    let relost = match cached {
        Some((device, info, lost)) => match lost.lock().ok().and_then(|l| l.clone()) {
            None => return Ok((device, info)),
            Some(reason) => Some(reason),
        },
        None => None,
    };
    // Ignored if a logger is already installed (the page may have its own).
    let _ = console_log::init_with_level(log::Level::Warn);
    // The first device and one made after a loss are made alike (one rule for limits and features).
    if let Some(reason) = &relost {
        warn(&format!("websd: the GPU device was lost ({reason}); creating a new one"));
    }
    let setup = fresh_setup().await?;
    let device = Device::wgpu_options().setup(setup.clone()).init().map_err(|e| {
        let after = if relost.is_some() { "after a device loss: " } else { "" };
        Error::GpuInit(format!("{after}{e}"))
    })?;
    install_error_handler(&setup);
    let mut device = device;
    if setup.device.features().contains(wgpu::Features::SHADER_F16) {
        // Weights stay f16 and the pipeline computes in f16 (GroupNorm statistics in f32): on lavapipe
        // the tiny pipeline is then 1.0e-2 from diffusers' fp32 image (crate/tests/f16_wgpu.rs).
        if let Err(e) = device.configure(burn::tensor::FloatDType::F16) {
            warn(&format!("websd: shader-f16 is there but f16 compute could not be configured ({e:?}); using f32"));
        }
    }
    let lost = Arc::new(std::sync::Mutex::new(None));
    let flag = lost.clone();
    setup.device.set_device_lost_callback(move |reason, message| {
        if let Ok(mut l) = flag.lock() {
            *l = Some(format!("{reason:?}: {message}"));
        }
    });
    let mut info = GpuInfo::from_setup(&setup);
    if info.adapter.is_empty() {
        info.adapter = browser_adapter_label().await.unwrap_or_default();
    }
    crate::kernels::set_adapter(&info.adapter, MAX_BUFFER_BYTES);
    let entry = WebGpu { device: device.clone(), info: info.clone(), raw: setup.device.clone(), lost };
    WGPU.with(|c| *c.borrow_mut() = Some(entry));
    Ok((device, info))
}

/// Largest GPU buffer and binding the engine asks for: WebGPU's guaranteed 128 MiB, whatever more the
/// adapter offers. cubecl sizes its memory pages by these limits, so the same run allocates the same
/// buffers on every adapter, and one that would need more fails here as it would on the smallest GPU.
pub const MAX_BUFFER_BYTES: u64 = 128 << 20;

/// A new adapter and device with the adapter's own limits, buffers capped at [`MAX_BUFFER_BYTES`], and
/// every feature it offers but mappable storage buffers (what cubecl's own initialisation requests).
#[cfg(target_arch = "wasm32")]
async fn fresh_setup() -> Result<WgpuSetup, Error> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::BROWSER_WEBGPU;
    let instance = wgpu::Instance::new(descriptor);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoGpu(e.to_string()))?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("websd"),
            required_features: adapter.features().difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
            required_limits: capped_limits(adapter.limits()),
            // cubecl pools its own allocations; bigger driver blocks would only add memory.
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::GpuInit(e.to_string()))?;
    Ok(WgpuSetup { instance, adapter, device, queue, backend: wgpu::Backend::BrowserWebGpu })
}

/// The adapter's limits with buffers and storage bindings capped at [`MAX_BUFFER_BYTES`].
pub fn capped_limits(adapter: wgpu::Limits) -> wgpu::Limits {
    wgpu::Limits {
        max_buffer_size: adapter.max_buffer_size.min(MAX_BUFFER_BYTES),
        max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size.min(MAX_BUFFER_BYTES),
        ..adapter
    }
}

/// Makes the device report a validation error, as a rejected buffer or kernel would (a testing aid):
/// a storage buffer that is also mappable, which the device was not asked to allow.
pub fn provoke_validation_error() -> Result<(), Error> {
    #[cfg(not(target_arch = "wasm32"))]
    let raw = RAW.get().cloned();
    #[cfg(target_arch = "wasm32")]
    let raw = WGPU.with(|c| c.borrow().as_ref().map(|g| g.raw.clone()));
    let raw = raw.ok_or_else(|| Error::GpuInit("no wgpu device yet".into()))?;
    let _ = raw.create_buffer(&wgpu::BufferDescriptor {
        label: Some("websd: provoked validation error"),
        size: 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    Ok(())
}

/// Destroys the current device, as a driver reset would (a testing aid): the lost callback fires from
/// the browser's promise (the caller gives it turns of the event loop) and the next [`wgpu_device`]
/// call creates a new one.
#[cfg(target_arch = "wasm32")]
pub async fn destroy_device() -> Result<(), Error> {
    wgpu_device().await?;
    let raw = WGPU.with(|c| c.borrow().as_ref().map(|g| g.raw.clone()));
    if let Some(raw) = raw {
        raw.destroy();
    }
    Ok(())
}

/// Browsers leave `GPUAdapterInfo.description` (wgpu's adapter name) empty; vendor and architecture
/// ("google swiftshader", "nvidia ampere") are what they do expose, read from a second adapter request.
#[cfg(target_arch = "wasm32")]
async fn browser_adapter_label() -> Option<String> {
    use js_sys::{Function, Promise, Reflect};
    use wasm_bindgen::{JsCast, JsValue};
    let get =
        |target: &JsValue, key: &str| Reflect::get(target, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined());
    let gpu = get(&get(&js_sys::global(), "navigator")?, "gpu")?;
    let request: Function = get(&gpu, "requestAdapter")?.dyn_into().ok()?;
    let promise: Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.ok().filter(|a| !a.is_null())?;
    let info = get(&adapter, "info")?;
    let parts: Vec<String> = ["vendor", "architecture", "device"]
        .into_iter()
        .filter_map(|key| get(&info, key)?.as_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}
