//! What the benchmark examples share.

use burn::tensor::{Device, FloatDType};

/// The device named on the command line: `cpu` (Flex), `wgpu` (computing in f32) or `wgpu-f16`
/// (weights and compute in f16; needs `shader-f16`). The adapter goes to stderr.
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
        other => panic!("unknown device {other}: cpu, wgpu or wgpu-f16"),
    }
}
