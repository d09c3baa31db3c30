//! Tokenizer + CLIP text encoder against diffusers' recorded prompt embeddings (Flex CPU, f32), for
//! fp32 and fp16 files and for both key-naming schemes.

use crate::common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use websd::models::clip::{ClipTextConfig, ClipTextModel};
use websd::tokenizer::ClipTokenizer;

fn model(dir: &str, file: &str) -> ClipTextModel {
    let root = common::fixtures_dir().join(dir).join("text_encoder");
    let config = ClipTextConfig::from_json(&std::fs::read_to_string(root.join("config.json")).unwrap()).unwrap();
    config.load(std::fs::File::open(root.join(file)).unwrap(), &Device::flex()).unwrap()
}

fn embed(model: &ClipTextModel, ids: &[u32]) -> Vec<f32> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 77]), &Device::flex());
    model.forward(input).last_hidden_state.into_data().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn prompt_embeddings_match_diffusers_for_every_run() {
    let tokenizer = ClipTokenizer::from_dir(&common::fixtures_dir().join("tiny-sd/tokenizer")).unwrap();
    let fp32 = model("tiny-sd", "model.safetensors");
    let fp16 = model("tiny-sd", "model.fp16.safetensors");
    let legacy = model("tiny-sd-legacykeys", "model.fp16.safetensors");
    let fp16_reference = common::Run::from_path(&common::fixtures_dir().join("fp16/fp16_reference.safetensors"));
    let mut runs = 0;
    for name in common::run_names() {
        let run = common::Run::load(&name);
        if !run.has("prompt_embeds") {
            continue;
        }
        runs += 1;
        let (_, recorded_ids) = run.i64("input_ids_prompt_neg");
        for (row, text_key, embeds_key) in
            [(0, "prompt", "prompt_embeds"), (1, "negative_prompt", "negative_prompt_embeds")]
        {
            let text = run.meta(text_key).unwrap();
            let ids = tokenizer.encode(&text).unwrap().ids;
            let want_ids: Vec<u32> = recorded_ids[row * 77..(row + 1) * 77].iter().map(|&i| i as u32).collect();
            assert_eq!(ids, want_ids, "{name}: ids of {text:?}");

            let (_, want) = run.f32(embeds_key);
            let d32 = max_diff(&embed(&fp32, &ids), &want);
            let d16 = max_diff(&embed(&fp16, &ids), &want);
            let legacy_vs_new = max_diff(&embed(&legacy, &ids), &embed(&fp16, &ids));
            eprintln!("{name} {embeds_key}: fp32 {d32:e}, fp16 files {d16:e}, legacy keys vs new {legacy_vs_new:e}");
            assert!(d32 <= 1e-4, "{name} {embeds_key}: fp32 weights differ by {d32}");
            // The fp16 files hold exactly the f16-rounded fp32 weights (see the weights tests): their
            // distance to this fp32-file reference (`d16`, ~1.5e-3) is the rounding's own effect, and
            // diffusers shows the same. They are held to diffusers' embeddings from the same fp16 files
            // (`tests/fixtures/fp16/`) below.
            let fp16_want = fp16_reference.f32(embeds_key).1;
            let d16_same_files = max_diff(&embed(&fp16, &ids), &fp16_want);
            let legacy_same_files = max_diff(&embed(&legacy, &ids), &fp16_want);
            eprintln!("{name} {embeds_key}: fp16 files vs diffusers on the fp16 files {d16_same_files:e}");
            assert!(d16.is_finite() && d16 > 0.0);
            assert!(
                d16_same_files <= 1e-4 && legacy_same_files <= 1e-4,
                "{name} {embeds_key}: fp16 files differ by {d16_same_files}"
            );
            assert_eq!(legacy_vs_new, 0.0, "both key schemes load the same weights");
        }
    }
    assert!(runs >= 6);
}

#[test]
fn pooled_output_is_taken_at_the_first_end_of_text() {
    let tokenizer = ClipTokenizer::from_dir(&common::fixtures_dir().join("tiny-sd/tokenizer")).unwrap();
    let model = model("tiny-sd", "model.safetensors");
    let encoded = tokenizer.encode("a cat").unwrap();
    let ids: Vec<i64> = encoded.ids.iter().map(|&i| i as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 77]), &Device::flex());
    let out = model.forward(ids.clone());
    assert!(out.text_embeds.is_none(), "no projection, nothing pooled");
    let pooled = model.pooled(&out.last_hidden_state, ids).into_data().try_to_vec::<f32>().unwrap();
    let last = out.last_hidden_state.into_data().try_to_vec::<f32>().unwrap();
    let eos = encoded.length - 1;
    assert_eq!(pooled, last[eos * 32..(eos + 1) * 32]);
    assert_eq!(out.penultimate_hidden_state.dims(), [1, 77, 32]);
}

#[test]
fn mismatched_configs_and_files_are_typed_errors_naming_the_tensors() {
    use websd::weights::LoadError;
    let root = common::fixtures_dir().join("tiny-sd/text_encoder");
    let json = std::fs::read_to_string(root.join("config.json")).unwrap();
    let load = |config: ClipTextConfig| {
        config.load(std::fs::File::open(root.join("model.safetensors")).unwrap(), &Device::flex())
    };
    let base = ClipTextConfig::from_json(&json).unwrap();

    match load(ClipTextConfig { num_hidden_layers: 4, ..base.clone() }) {
        Err(LoadError::Unexpected(names)) => {
            assert!(names.iter().all(|n| n.starts_with("encoder.layers.4.")), "{names:?}")
        }
        other => panic!("expected unexpected tensors, got {other:?}"),
    }
    match load(ClipTextConfig { num_hidden_layers: 6, ..base.clone() }) {
        Err(LoadError::Missing(names)) => {
            assert_eq!(names.len(), 16);
            assert!(names.iter().all(|n| n.starts_with("encoder.layers.5.")), "{names:?}");
        }
        other => panic!("expected missing tensors, got {other:?}"),
    }
    match load(ClipTextConfig { intermediate_size: 40, ..base.clone() }) {
        Err(LoadError::Shape { name, expected, actual }) => {
            assert_eq!(
                (name.as_str(), expected, actual),
                ("encoder.layers.0.mlp.fc1.weight", vec![40, 32], vec![37, 32])
            );
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    let without_hidden = json.replace("\"hidden_size\"", "\"hidden_width\"");
    let err = ClipTextConfig::from_json(&without_hidden).unwrap_err().to_string();
    assert!(err.contains("hidden_size"), "{err}");
}
