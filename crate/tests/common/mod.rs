//! Reading the diffusers reference dumps in `tests/fixtures/` (see its README).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use websd::config::{UNet2DConditionConfig, parse};
use websd::models::unet_2d_condition::UNet2DConditionModel;
use websd::schedulers::{SchedulerConfig, SchedulerKind};

/// `tests/fixtures/` at the workspace root.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The names of all recorded runs (`tests/fixtures/runs/*`).
pub fn run_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir().join("runs"))
        .expect("tests/fixtures/runs")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// One run's `tensors.safetensors`.
pub struct Run {
    pub name: String,
    bytes: Vec<u8>,
}

impl Run {
    pub fn load(name: &str) -> Self {
        Self::from_path(&fixtures_dir().join("runs").join(name).join("tensors.safetensors"))
    }

    /// Any safetensors file (such as `sd generate --dump` output).
    pub fn from_path(path: &std::path::Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { name: path.display().to_string(), bytes }
    }

    fn parsed(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }

    /// The string metadata diffusers' oracle stored with the run.
    pub fn metadata(&self) -> HashMap<String, String> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).expect("header");
        meta.metadata().clone().unwrap_or_default()
    }

    pub fn meta(&self, key: &str) -> Option<String> {
        self.metadata().get(key).cloned()
    }

    pub fn has(&self, name: &str) -> bool {
        self.parsed().names().iter().any(|n| *n == name)
    }

    /// Tensor names with the given prefix, sorted.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> =
            self.parsed().names().into_iter().filter(|n| n.starts_with(prefix)).map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    /// A recorded f32 tensor: its shape and values.
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.parsed();
        let view = st.tensor(name).unwrap_or_else(|_| panic!("{}: no tensor {name}", self.name));
        assert_eq!(view.dtype(), Dtype::F32, "{name} is f32");
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (view.shape().to_vec(), values)
    }

    /// A recorded i64 tensor: its shape and values.
    pub fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let st = self.parsed();
        let view = st.tensor(name).unwrap_or_else(|_| panic!("{}: no tensor {name}", self.name));
        assert_eq!(view.dtype(), Dtype::I64, "{name} is i64");
        let values = view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        (view.shape().to_vec(), values)
    }

    /// A recorded 4-d f32 tensor on `device`.
    pub fn tensor4(&self, name: &str, device: &Device) -> Tensor<4> {
        let (shape, values) = self.f32(name);
        let shape: [usize; 4] = shape.try_into().unwrap_or_else(|s| panic!("{name} is 4-d, got {s:?}"));
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// Largest absolute difference between a tensor and reference values.
pub fn max_diff(actual: Tensor<4>, expected: &[f32]) -> f32 {
    let actual: Vec<f32> = actual.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(actual.len(), expected.len(), "sizes differ");
    actual.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// The tiny model's own scheduler config (DDIM), which the runs without a recorded one (img2img,
/// inpainting) used.
pub fn ddim_scheduler_config() -> SchedulerConfig {
    let path = fixtures_dir().join("scheduler_configs/ddim/scheduler_config.json");
    SchedulerConfig::from_json(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The scheduler a run used: its recorded config (diffusers' `from_config` of the model's) and class,
/// else the tiny model's DDIM.
pub fn run_scheduler(run: &Run) -> (SchedulerConfig, SchedulerKind) {
    let config = match run.meta("scheduler_config") {
        Some(json) => SchedulerConfig::from_json(&json).unwrap(),
        None => ddim_scheduler_config(),
    };
    let kind = SchedulerKind::from_class_name(config.class_name().unwrap_or("DDIMScheduler"), &config).unwrap();
    (config, kind)
}

/// A fixture model's U-Net from one of its weight files.
pub fn unet(model: &str, file: &str, device: &Device) -> UNet2DConditionModel {
    let dir = fixtures_dir().join(model).join("unet");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: UNet2DConditionConfig = parse("unet/config.json", &text).unwrap();
    UNet2DConditionModel::load(&config, std::fs::File::open(dir.join(file)).unwrap(), device).unwrap()
}
