//! The torch-compatible RNG and a stochastic scheduler (LCM) in the browser: the generator must give
//! the same bits in wasm as torch on x86, and the scheduler's tensor math must run on WebGPU and match
//! diffusers' recorded trajectory (f32 WebGPU tolerance: 10x the CPU's 1e-5, per the fixtures contract).
#![cfg(target_arch = "wasm32")]

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;
use wasm_bindgen_test::*;
use websd::rng::TorchRng;
use websd::schedulers::{self, SchedulerConfig, SchedulerKind};

static LCM_RUN: &[u8] = include_bytes!("../fixtures/runs/txt2img_lcm/tensors.safetensors");

/// The fixture file, read directly (8-byte header length, JSON header, f32 data). A safetensors crate
/// dependency here would change shared features and rebuild burn for this test alone.
struct SafeTensors {
    header: BTreeMap<String, Value>,
    data: &'static [u8],
}

impl SafeTensors {
    fn deserialize(bytes: &'static [u8]) -> Self {
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        Self { header, data: &bytes[8 + len..] }
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.header.keys().map(String::as_str).filter(|k| *k != "__metadata__")
    }

    fn metadata(&self, key: &str) -> &str {
        self.header["__metadata__"][key].as_str().unwrap()
    }
}

fn f32s(run: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let entry = &run.header[name];
    assert_eq!(entry["dtype"], "F32");
    let shape = entry["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
    let values = run.data[start..end].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (shape, values)
}

fn tensor4(run: &SafeTensors, name: &str, device: &Device) -> Tensor<4> {
    let (shape, values) = f32s(run, name);
    let shape: [usize; 4] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[wasm_bindgen_test]
fn torch_rng_is_bit_exact_in_wasm() {
    let run = SafeTensors::deserialize(LCM_RUN);
    let names: Vec<&str> = run.names().filter(|n| n.starts_with("randn_")).collect();
    assert_eq!(names.len(), 8);
    let mut rng = TorchRng::new(0);
    for name in names {
        let (_, want) = f32s(&run, name);
        let got = rng.randn(want.len());
        let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name} differs in wasm");
    }
}

#[wasm_bindgen_test]
async fn lcm_steps_on_webgpu_match_diffusers() {
    let (gpu, _) = websd::gpu::wgpu_device().await.expect("WebGPU adapter");
    let run = SafeTensors::deserialize(LCM_RUN);
    let config = SchedulerConfig::from_json(run.metadata("scheduler_config")).unwrap();
    let mut scheduler = schedulers::build(SchedulerKind::Lcm, &config).unwrap();
    scheduler.set_timesteps(8).unwrap();

    let mut rng = TorchRng::new(0);
    let initial = schedulers::randn(&mut rng, [1, 4, 32, 32], &gpu) * scheduler.init_noise_sigma();
    let mut worst = 0.0f32;
    for i in 0..8 {
        let sample =
            if i == 0 { initial.clone() } else { tensor4(&run, &format!("latents_after_step_{:02}", i - 1), &gpu) };
        let out = tensor4(&run, &format!("unet_out_{i:02}"), &gpu);
        let (uncond, text) = (out.clone().narrow(0, 0, 1), out.narrow(0, 1, 1));
        let guided = uncond.clone() + (text - uncond) * 7.5;
        let prev = scheduler.step(guided, sample, &mut rng).unwrap();
        let got = prev.into_data_async().await.unwrap().try_to_vec::<f32>().unwrap();
        let (_, want) = f32s(&run, &format!("latents_after_step_{i:02}"));
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff <= 1e-4, "LCM step {i} on WebGPU differs by {diff}");
        worst = worst.max(diff);
    }
    console_log!("LCM on WebGPU: worst max abs diff {worst:e}");
}
