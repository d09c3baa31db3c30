//! Textual inversion against diffusers (`tests/fixtures/textual_inversion/`): a 2-vector embedding in
//! A1111's `emb_params` layout, loaded by diffusers' `load_textual_inversion(file, token=...)`; our prompt
//! embeddings within 1e-4 and our image within 2e-3 of diffusers', from the library and the CLI.

use crate::common;

use burn::tensor::Device;
use common::{Run, fixtures_dir, max_diff};
use websd::pipeline::{GenerateRequest, PipelineError, StableDiffusion};
use websd::schedulers::SchedulerKind;
use websd::textual_inversion::{Embedding, EmbeddingError};
use websd::weights::Variant;

fn embedding(token: &str) -> Embedding {
    let file = std::fs::File::open(fixtures_dir().join("textual_inversion/tiny-style.safetensors")).unwrap();
    Embedding::from_source(token, file).unwrap()
}

fn model() -> StableDiffusion {
    StableDiffusion::load_dir(&fixtures_dir().join("tiny-sd"), Some(Variant::Fp32), &Device::flex()).unwrap()
}

#[test]
fn an_embedding_gives_diffusers_prompt_embeddings_and_image() {
    let run = Run::from_path(&fixtures_dir().join("textual_inversion/run.safetensors"));
    let meta = |k: &str| run.meta(k).unwrap();
    let mut model = model();
    let e = embedding(&meta("token"));
    assert_eq!((e.count, e.width), (2, 32));
    model.add_textual_inversion(e).unwrap();
    for weighting in [false, true] {
        let embeds = model.encode_prompt(&meta("prompt"), None, weighting).unwrap().states;
        let diff = max_diff(embeds.unsqueeze(), &run.f32("prompt_embeds").1);
        assert!(diff <= 1e-4, "prompt embeddings (weighting {weighting}): {diff}");
    }
    let request = GenerateRequest {
        prompt: meta("prompt"),
        negative_prompt: meta("negative_prompt"),
        steps: meta("num_inference_steps").parse().unwrap(),
        guidance: meta("guidance_scale").parse().unwrap(),
        width: Some(64),
        height: Some(64),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    let out = model.generate(&request, false, |_| true).unwrap();
    let diff = max_diff(out.images, &run.f32("image").1);
    eprintln!("textual inversion: image max abs diff {diff:e} vs diffusers");
    assert!(diff <= 2e-3, "{diff}");
    // The same word again is refused, and nothing changes.
    let again = model.add_textual_inversion(embedding(&meta("token"))).err().unwrap();
    assert!(matches!(&again, PipelineError::Invalid(m) if m.contains("already a token")), "{again:?}");
    assert_eq!(model.text_encoder.token_embedding.rows(), 49408 + 2);
}

#[test]
fn bad_embeddings_are_refused() {
    // Another width than the text encoder's.
    let file = std::fs::File::open(fixtures_dir().join("lora/lora_peft.safetensors")).unwrap();
    let err = Embedding::from_source("x", file).err().unwrap();
    assert!(matches!(&err, EmbeddingError::Invalid { message, .. } if message.contains("emb_params")), "{err}");
    let mut wide = embedding("wide");
    wide.width = 64;
    wide.vectors.extend(vec![0.0; 64]);
    assert!(matches!(model().add_textual_inversion(wide), Err(PipelineError::Invalid(m)) if m.contains("32")));
    let file = std::fs::File::open(fixtures_dir().join("textual_inversion/tiny-style.safetensors")).unwrap();
    assert!(Embedding::from_source("two words", file).is_err());
    // A word the vocabulary has.
    assert!(model().add_textual_inversion(embedding("cat")).is_err());
}

#[test]
fn the_cli_takes_embeddings() {
    let out = std::env::temp_dir().join("websd-cli-embedding.png");
    let model = fixtures_dir().join("tiny-sd");
    let file = fixtures_dir().join("textual_inversion/tiny-style.safetensors");
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "a cat, tiny-style", "--out"])
        .arg(&out)
        .args(["--steps", "1", "--width", "16", "--height", "16", "--embedding"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(0), "{}", String::from_utf8_lossy(&result.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let reader = decoder.read_info().unwrap();
    let text = reader.info().utf8_text.iter().find(|t| t.keyword == "parameters").unwrap().get_text().unwrap();
    let hash = Embedding::short_hash(&std::fs::read(&file).unwrap());
    assert!(text.ends_with(&format!(", TI hashes: \"tiny-style: {hash}\"")), "{text}");
}

/// The browser's way: the set of embeddings changes between generations of one loaded model
/// (`set_textual_inversions`); taking one off gives back the plain tokenizer and table.
#[test]
fn embeddings_can_be_set_and_taken_off_again() {
    let run = Run::from_path(&fixtures_dir().join("textual_inversion/run.safetensors"));
    let prompt = run.meta("prompt").unwrap();
    let mut model = model();
    let plain = model.encode_prompt(&prompt, None, false).unwrap().states;
    let plain: Vec<f32> = plain.into_data().try_to_vec().unwrap();
    let rows = model.text_encoder.token_embedding.rows();
    for round in 0..2 {
        model.set_textual_inversions(vec![embedding("tiny-style")]).unwrap();
        let embeds = model.encode_prompt(&prompt, None, false).unwrap().states;
        assert!(max_diff(embeds.unsqueeze(), &run.f32("prompt_embeds").1) <= 1e-4, "round {round}");
        assert_eq!(model.text_encoder.token_embedding.rows(), rows + 2);
        model.set_textual_inversions(vec![]).unwrap();
        assert_eq!(model.text_encoder.token_embedding.rows(), rows);
        let back: Vec<f32> =
            model.encode_prompt(&prompt, None, false).unwrap().states.into_data().try_to_vec().unwrap();
        assert_eq!(back, plain, "round {round}: without it, the plain embeddings exactly");
    }
    // A set with a bad member leaves none.
    let err = model.set_textual_inversions(vec![embedding("tiny-style"), embedding("cat")]);
    assert!(err.is_err());
    assert!(model.textual_inversions.is_empty());
    assert_eq!(model.text_encoder.token_embedding.rows(), rows);
}
