//! What the benchmark examples share.

use burn::tensor::{Device, FloatDType};

/// The device named on the command line: `cpu` (Flex), `wgpu` (computing in f32) or `wgpu-f16`
/// (weights and compute in f16; needs `shader-f16`) or `wgpu-capped` (see below). The adapter goes to stderr.
pub fn device(kind: &str) -> Device {
    match kind {
        "cpu" => Device::flex(),
        "wgpu" | "wgpu-f16" => {
            let (mut device, info) = websd::gpu::wgpu_device().expect("a wgpu adapter");
            if kind == "wgpu-f16" {
                device.configure(FloatDType::F16).expect("f16 compute (shader-f16)");
            }
            eprintln!("adapter: {} ({}), shader-f16 {}", info.adapter, info.backend, info.shader_f16);
            device
        }
        // As the browser gets it: buffers and bindings capped at 128 MiB (gpu::capped_limits), no autotune
        // choice on cubecl's own Vulkan setup. With VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json
        // this is Chromium's SwiftShader, the headless browser's WebGPU, natively (its 1 GiB limits make
        // cubecl's own setup run out of memory).
        "wgpu-capped" => {
            use burn::tensor::wgpu::{WgpuSetup, wgpu};
            let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
            descriptor.backends = wgpu::Backends::VULKAN;
            let instance = wgpu::Instance::new(descriptor);
            let adapter =
                pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).expect("adapter");
            let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("websd example"),
                required_features: adapter.features().difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
                required_limits: websd::gpu::capped_limits(adapter.limits()),
                memory_hints: wgpu::MemoryHints::MemoryUsage,
                ..Default::default()
            }))
            .expect("device");
            eprintln!("adapter: {} (Vulkan, capped limits)", adapter.get_info().name);
            websd::kernels::set_adapter(&adapter.get_info().name, websd::gpu::MAX_BUFFER_BYTES);
            let setup = WgpuSetup { instance, adapter, device, queue, backend: wgpu::Backend::Vulkan };
            Device::wgpu_options().setup(setup).init().expect("burn's wgpu device")
        }
        other => panic!("unknown device {other}: cpu, wgpu, wgpu-f16 or wgpu-capped"),
    }
}
