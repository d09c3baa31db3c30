//! The CLIP tokenizer compiled to wasm32 (tokenizers with `unstable_wasm`) against transformers' ids.
#![cfg(target_arch = "wasm32")]

use serde_json::Value;
use wasm_bindgen_test::*;
use websd::tokenizer::{ClipTokenizer, TokenizerFiles};

static TOKENIZER_JSON: &[u8] = include_bytes!("../fixtures/tiny-sd/tokenizer/tokenizer.json");
static CONFIG: &[u8] = include_bytes!("../fixtures/tiny-sd/tokenizer/tokenizer_config.json");
static CASES: &[u8] = include_bytes!("../fixtures/tokenizer/tokenizer_cases.json");

#[wasm_bindgen_test]
fn tokenizer_matches_transformers_in_wasm() {
    let tok = ClipTokenizer::from_files(TokenizerFiles {
        tokenizer_json: Some(TOKENIZER_JSON),
        tokenizer_config_json: Some(CONFIG),
        ..Default::default()
    })
    .unwrap();
    let cases: Vec<Value> = serde_json::from_slice(CASES).unwrap();
    assert_eq!(cases.len(), 21);
    for case in cases {
        let want: Vec<u32> = case["hf_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
        let got = tok.encode(case["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(got.ids[..want.len()], want[..], "{}", case["prompt"]);
        assert!(got.ids[want.len()..].iter().all(|&id| id == tok.pad));
    }
}
