//! Reading model weights: the safetensors format, streamed tensor by tensor from any byte source, so a
//! weight file is never in memory as a whole (a 1.7 GB UNet in a browser tab would not fit).

mod f16_decode;
mod loader;
mod safetensors;

pub use f16_decode::{extend_f16_le_to_f32, f16_le_to_f32};
pub use loader::{DeviceTensors, IntoTensorSource, KeyMap, LoadError, TensorLoader, TensorSource, host_data};

pub use safetensors::{ByteSource, Dtype, SafetensorsHeader, SafetensorsReader, TensorInfo, WeightsError};

/// Which weight files of a diffusers folder to read (`--variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `*.fp16.safetensors`.
    Fp16,
    /// `*.safetensors`.
    Fp32,
}

/// The weights file of a component folder (`unet/`, `vae/`, `text_encoder/`): the requested variant,
/// or without one the fp16 file when present (half the download), else the fp32 one.
#[cfg(not(target_arch = "wasm32"))]
pub fn component_weights(
    component_dir: &std::path::Path,
    variant: Option<Variant>,
) -> Result<std::path::PathBuf, WeightsError> {
    let stem =
        if component_dir.join("model.safetensors").exists() || component_dir.join("model.fp16.safetensors").exists() {
            "model"
        } else {
            "diffusion_pytorch_model"
        };
    let fp16 = component_dir.join(format!("{stem}.fp16.safetensors"));
    let fp32 = component_dir.join(format!("{stem}.safetensors"));
    let pick = match variant {
        Some(Variant::Fp16) => Some(fp16),
        Some(Variant::Fp32) => Some(fp32),
        None => [fp16, fp32].into_iter().find(|p| p.exists()),
    };
    pick.filter(|p| p.exists()).ok_or_else(|| {
        let wanted = match variant {
            Some(Variant::Fp16) => "fp16 ",
            Some(Variant::Fp32) => "fp32 ",
            None => "",
        };
        WeightsError::Io(format!("no {wanted}safetensors weights in {}", component_dir.display()))
    })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod variant_tests {
    use super::*;

    #[test]
    fn variants_pick_the_file_set() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let te = root.join("tiny-sd/text_encoder");
        assert!(component_weights(&te, None).unwrap().ends_with("model.fp16.safetensors"));
        assert!(component_weights(&te, Some(Variant::Fp32)).unwrap().ends_with("text_encoder/model.safetensors"));
        let unet = root.join("tiny-sd/unet");
        assert!(
            component_weights(&unet, Some(Variant::Fp16))
                .unwrap()
                .ends_with("diffusion_pytorch_model.fp16.safetensors")
        );
        // The legacy-keys model ships fp16 only.
        let legacy = root.join("tiny-sd-legacykeys/text_encoder");
        assert!(
            matches!(component_weights(&legacy, Some(Variant::Fp32)), Err(WeightsError::Io(m)) if m.contains("fp32"))
        );
        assert!(component_weights(&root.join("nowhere"), None).is_err());
    }
}
