//! A1111 prompt weighting against `tests/fixtures/prompt_weighting/` (A1111's algorithm written out in
//! Python, run on transformers' CLIP): the parser case for case, the chunk ids and the weighted text
//! encoder states with tiny-sd's tokenizer (pads with EOS) and tiny-sd2's (pads with "!"); plain prompts
//! encode exactly as without weighting, and weighted prompts of different lengths generate under guidance.

use crate::common;

use burn::tensor::Device;
use common::{Run, fixtures_dir};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde_json::Value;
use websd::models::clip::ClipTextConfig;
use websd::pipeline::{GenerateRequest, PipelineError, StableDiffusion};
use websd::prompt_weighting::{Piece, PromptError, parse_prompt_attention, prompt_chunks};
use websd::tokenizer::ClipTokenizer;
use websd::weights::Variant;

fn json(name: &str) -> Vec<Value> {
    let path = fixtures_dir().join("prompt_weighting").join(name);
    serde_json::from_slice::<Value>(&std::fs::read(path).unwrap()).unwrap().as_array().unwrap().clone()
}

fn load(model: &str) -> StableDiffusion {
    StableDiffusion::load_dir(&fixtures_dir().join(model), Some(Variant::Fp32), &Device::flex()).unwrap()
}

/// tiny-sd with the reference's text encoder: its own with the final layer norm of
/// `final_layer_norm.safetensors` (tiny-sd's own, weight 1 and bias 0, gives zero-mean states, and
/// A1111's mean restoring 0/0), and the tokenizer of `tokenizer_from`.
fn reference_model(tokenizer_from: &str) -> StableDiffusion {
    let mut model = load("tiny-sd");
    let dir = fixtures_dir();
    let original = std::fs::read(dir.join("tiny-sd/text_encoder/model.safetensors")).unwrap();
    let norm = std::fs::read(dir.join("prompt_weighting/final_layer_norm.safetensors")).unwrap();
    let (original, norm) = (SafeTensors::deserialize(&original).unwrap(), SafeTensors::deserialize(&norm).unwrap());
    let tensors: Vec<(String, TensorView<'_>)> = original
        .tensors()
        .into_iter()
        .map(|(name, view)| match name.strip_prefix("final_layer_norm.") {
            Some(param) => (name.clone(), norm.tensor(param).unwrap()),
            None => (name, view),
        })
        .collect();
    let bytes = safetensors::serialize(tensors, None).unwrap();
    let config = std::fs::read_to_string(dir.join("tiny-sd/text_encoder/config.json")).unwrap();
    let config = ClipTextConfig::from_json(&config).unwrap();
    model.text_encoder = config.load(std::io::Cursor::new(bytes), &Device::flex()).unwrap();
    model.tokenizer = ClipTokenizer::from_dir(&dir.join(tokenizer_from).join("tokenizer")).unwrap();
    model
}

#[test]
fn the_parser_matches_a1111_case_for_case() {
    let cases = json("parses.json");
    assert!(cases.len() >= 45, "{}", cases.len());
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<(String, f64)> = case["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
            .collect();
        let got: Vec<(String, f64)> = parse_prompt_attention(prompt)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Text(t, w) => (t, w),
                Piece::Break => ("BREAK".into(), -1.0),
            })
            .collect();
        // Same operations in the same order; serde_json's float parsing is not always correctly rounded,
        // so the weights are compared to 1e-12 (the texts say where pieces merged).
        let texts = |v: &[(String, f64)]| v.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&got), texts(&want), "{prompt:?}");
        for ((_, g), (_, w)) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 * w.abs(), "{prompt:?}: {got:?} vs {want:?}");
        }
    }
}

#[test]
fn weighted_embeddings_match_the_reference() {
    let reference = Run::from_path(&fixtures_dir().join("prompt_weighting/embeddings.safetensors"));
    let cases = json("prompts.json");
    for tokenizer_from in ["tiny-sd", "tiny-sd2"] {
        let model = reference_model(tokenizer_from);
        for case in cases.iter().filter(|c| c["tokenizer"] == tokenizer_from) {
            let prompt = case["prompt"].as_str().unwrap();
            let want_ids: Vec<Vec<u32>> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect())
                .collect();
            let chunks = prompt_chunks(&model.tokenizer, prompt).unwrap();
            let ids: Vec<Vec<u32>> = chunks.iter().map(|c| c.ids.clone()).collect();
            assert_eq!(ids, want_ids, "{tokenizer_from} {prompt:?}");
            let got = model.encode_prompt(prompt, None, true).unwrap().states;
            let (shape, want) = reference.f32(case["key"].as_str().unwrap());
            assert_eq!(got.dims().to_vec(), shape, "{tokenizer_from} {prompt:?}");
            let got = got.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let short: String = prompt.chars().take(40).collect();
            eprintln!("{tokenizer_from}'s tokenizer, {short:?}: {} chunks, max abs diff {diff:e}", ids.len());
            assert!(diff <= 1e-4, "{tokenizer_from} {prompt:?}: {diff}");
        }
        // The weights do change the states (prompt 1 is prompt 0's tokens, weighted).
        let (_, plain) = reference.f32(&format!("{tokenizer_from}/0"));
        let (_, weighted) = reference.f32(&format!("{tokenizer_from}/1"));
        let moved = plain.iter().zip(&weighted).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved > 0.1, "{moved}");
    }
}

#[test]
fn plain_prompts_encode_exactly_as_without_weighting() {
    let model = load("tiny-sd");
    for prompt in ["a photo of an astronaut riding a horse", "", "blurry", "a: b, c; d"] {
        let on = model.encode_prompt(prompt, None, true).unwrap().states.into_data();
        let off = model.encode_prompt(prompt, None, false).unwrap().states.into_data();
        assert_eq!(on, off, "{prompt:?}");
    }
    // Without weighting, brackets are text and long prompts are truncated to 77 tokens.
    let long = "castle, ".repeat(60);
    assert_eq!(model.encode_prompt(&long, None, false).unwrap().states.dims(), [1, 77, 32]);
    assert_eq!(model.encode_prompt(&long, None, true).unwrap().states.dims(), [1, 77 * 2, 32]);
    let bracketed = model.encode_prompt("(castle:1.5)", None, false).unwrap().states.into_data();
    assert_ne!(bracketed, model.encode_prompt("(castle:1.5)", None, true).unwrap().states.into_data());
}

#[test]
fn weighted_prompts_of_different_lengths_generate_and_bad_ones_are_refused() {
    let model = load("tiny-sd");
    let long = format!("((a photo)) of an astronaut, {}", "riding a horse, ".repeat(30));
    let request = GenerateRequest {
        prompt: long,
        negative_prompt: "[blurry]".into(),
        steps: 2,
        width: Some(32),
        height: Some(32),
        ..Default::default()
    };
    let out = model.generate(&request, false, |_| true).unwrap();
    let pixels = &out.rgba8()[0];
    assert_eq!(pixels.len(), 32 * 32 * 4);
    // The positive prompt (2 chunks) and the negative (1) went through the U-Net apart, as A1111 runs
    // them: not the same as a negative padded to 2 chunks with an empty one (a BREAK at the end adds none;
    // two do), which runs batched.
    let padded = GenerateRequest { negative_prompt: "[blurry] BREAK BREAK".into(), ..request.clone() };
    assert_ne!(model.generate(&padded, false, |_| true).unwrap().rgba8()[0], *pixels);

    let bad = GenerateRequest { prompt: "(a:1.2.3)".into(), ..request.clone() };
    let err = model.generate(&bad, false, |_| true).err().unwrap();
    assert_eq!(err, PipelineError::Prompt(PromptError::BadWeight("1.2.3".into())));
    let too_long = GenerateRequest { prompt: "castle ".repeat(1300), ..request.clone() };
    let err = model.generate(&too_long, false, |_| true).err().unwrap();
    assert!(matches!(err, PipelineError::Prompt(PromptError::TooLong { chunks: 18, .. })), "{err:?}");
    assert!(err.to_string().contains("at most 16"), "{err}");
    // Off, both are plain text.
    let plain = GenerateRequest { prompt_weighting: false, ..bad };
    model.generate(&plain, false, |_| true).unwrap();
}
