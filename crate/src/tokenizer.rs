//! The CLIP tokenizer on the `tokenizers` crate, configured from a diffusers model's `tokenizer/` folder:
//! `tokenizer.json` when present, else `vocab.json` + `merges.txt` (turned into the same pipeline
//! transformers' `CLIPTokenizerFast` builds), with the BOS/EOS/pad tokens read from the model's own
//! `tokenizer_config.json` / `special_tokens_map.json` (SD1 pads with `<|endoftext|>`, SD2 with `!`).

use serde_json::{Value, json};
use tokenizers::Tokenizer;

/// Errors of building or using the tokenizer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenizerError {
    /// None of the files a tokenizer can be built from is there.
    #[error("tokenizer: neither tokenizer.json nor vocab.json + merges.txt was given")]
    MissingFiles,
    /// A file could not be parsed.
    #[error("tokenizer: {file} is invalid: {message}")]
    Invalid { file: &'static str, message: String },
    /// A special token named by the config is not in the vocabulary.
    #[error("tokenizer: the {role} token {token:?} is not in the vocabulary")]
    UnknownToken { role: &'static str, token: String },
    /// The tokenizer failed on an input.
    #[error("tokenizer: {0}")]
    Encode(String),
}

/// The files of a `tokenizer/` folder, as bytes (read from disk natively, from IndexedDB in the worker).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenizerFiles<'a> {
    pub tokenizer_json: Option<&'a [u8]>,
    pub vocab_json: Option<&'a [u8]>,
    pub merges_txt: Option<&'a [u8]>,
    pub tokenizer_config_json: Option<&'a [u8]>,
    pub special_tokens_map_json: Option<&'a [u8]>,
}

/// Token ids for the text encoder: always `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// BOS, the prompt's tokens, EOS, then padding up to `max_length`.
    pub ids: Vec<u32>,
    /// Tokens before padding (BOS and EOS included).
    pub length: usize,
    /// Prompt tokens dropped by truncation (0 when the prompt fits).
    pub truncated: usize,
}

/// A CLIP tokenizer with the model's special tokens and maximum length.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    /// Begin-of-text id.
    pub bos: u32,
    /// End-of-text id (always kept last when truncating).
    pub eos: u32,
    /// Padding id.
    pub pad: u32,
    /// Sequence length of the text encoder (77).
    pub max_length: usize,
}

fn parse_json(file: &'static str, bytes: &[u8]) -> Result<Value, TokenizerError> {
    serde_json::from_slice(bytes).map_err(|e| TokenizerError::Invalid { file, message: e.to_string() })
}

/// A token field of tokenizer_config.json / special_tokens_map.json: a string or `{"content": ...}`.
fn token_field(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The tokenizer.json transformers writes for CLIP, built around a vocab and merges.
fn clip_tokenizer_json(vocab: Value, merges: &str, bos: &str, eos: &str, unk: &str) -> Value {
    let merges: Vec<&str> = merges.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()).collect();
    let id = |token: &str| vocab.get(token).cloned().unwrap_or(Value::Null);
    let special = |token: &str| {
        json!({"id": id(token), "content": token, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(bos), special(eos)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, id(eos)], "cls": [bos, id(bos)],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

impl ClipTokenizer {
    /// Builds the tokenizer from a `tokenizer/` folder's files.
    pub fn from_files(files: TokenizerFiles<'_>) -> Result<Self, TokenizerError> {
        let config = files.tokenizer_config_json.map(|b| parse_json("tokenizer_config.json", b)).transpose()?;
        let special = files.special_tokens_map_json.map(|b| parse_json("special_tokens_map.json", b)).transpose()?;
        // special_tokens_map.json wins over tokenizer_config.json, as in transformers; CLIP defaults last.
        let token = |key: &str, default: &str| {
            [special.as_ref(), config.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|v| v.get(key).and_then(token_field))
                .unwrap_or_else(|| default.to_string())
        };
        let (bos, eos) = (token("bos_token", "<|startoftext|>"), token("eos_token", "<|endoftext|>"));
        let (pad, unk) = (token("pad_token", &eos), token("unk_token", &eos));
        let max_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(Value::as_u64)
            .filter(|&n| (3..=crate::config::MAX_POSITIONS as u64).contains(&n))
            .unwrap_or(77) as usize;

        let inner = match (files.tokenizer_json, files.vocab_json, files.merges_txt) {
            (Some(json), _, _) => Tokenizer::from_bytes(json)
                .map_err(|e| TokenizerError::Invalid { file: "tokenizer.json", message: e.to_string() })?,
            (None, Some(vocab), Some(merges)) => {
                let vocab = parse_json("vocab.json", vocab)?;
                let merges = std::str::from_utf8(merges)
                    .map_err(|e| TokenizerError::Invalid { file: "merges.txt", message: e.to_string() })?;
                let json = serde_json::to_vec(&clip_tokenizer_json(vocab, merges, &bos, &eos, &unk)).expect("JSON");
                Tokenizer::from_bytes(json)
                    .map_err(|e| TokenizerError::Invalid { file: "vocab.json/merges.txt", message: e.to_string() })?
            }
            _ => return Err(TokenizerError::MissingFiles),
        };
        let id = |role: &'static str, token: &str| {
            inner.token_to_id(token).ok_or_else(|| TokenizerError::UnknownToken { role, token: token.to_string() })
        };
        Ok(Self { bos: id("bos", &bos)?, eos: id("eos", &eos)?, pad: id("pad", &pad)?, max_length, inner })
    }

    /// The files of a tokenizer folder it may read, in the order of [`Self::from_named_files`].
    pub const FILES: [&str; 5] =
        ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"];

    /// From a tokenizer folder's files, as [`Self::FILES`] names them (`None` for one it lacks).
    pub fn from_named_files(files: &[Option<Vec<u8>>; 5]) -> Result<Self, TokenizerError> {
        let [tokenizer_json, vocab_json, merges_txt, tokenizer_config_json, special_tokens_map_json] =
            files.each_ref().map(Option::as_deref);
        Self::from_files(TokenizerFiles {
            tokenizer_json,
            vocab_json,
            merges_txt,
            tokenizer_config_json,
            special_tokens_map_json,
        })
    }

    /// Reads a `tokenizer/` folder from disk.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, TokenizerError> {
        Self::from_named_files(&Self::FILES.map(|name| std::fs::read(dir.join(name)).ok()))
    }

    /// One more than the largest id the tokenizer can produce (vocabulary and added tokens): the rows
    /// the text encoder's embedding table needs.
    pub fn id_bound(&self) -> usize {
        self.inner.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1)
    }

    /// Tokenizes a prompt: BOS, tokens, EOS; truncated to `max_length` with EOS kept last, then padded.
    /// Any string is accepted (the empty prompt encodes to BOS, EOS and padding).
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let encoding = self.inner.encode(text, true).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        let truncated = ids.len().saturating_sub(self.max_length);
        if truncated > 0 {
            ids.truncate(self.max_length - 1);
            ids.push(self.eos);
        }
        let length = ids.len();
        ids.resize(self.max_length, self.pad);
        Ok(Encoded { ids, length, truncated })
    }
}

impl ClipTokenizer {
    /// A text's tokens without BOS, EOS, truncation or padding (prompt weighting tokenises each
    /// weighted piece on its own, as A1111 does).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Adds tokens matched whole in any text (textual-inversion triggers, as transformers' `add_tokens`);
    /// their ids follow the largest one. A token the vocabulary already has is refused.
    pub fn add_tokens(&mut self, tokens: &[String]) -> Result<Vec<u32>, TokenizerError> {
        if let Some(taken) = tokens.iter().find(|t| self.inner.token_to_id(t).is_some()) {
            return Err(TokenizerError::Encode(format!("{taken:?} is already a token of this tokenizer")));
        }
        let added: Vec<tokenizers::AddedToken> =
            tokens.iter().map(|t| tokenizers::AddedToken::from(t.clone(), false)).collect();
        self.inner.add_tokens(added).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        tokens
            .iter()
            .map(|t| self.inner.token_to_id(t).ok_or_else(|| TokenizerError::Encode(format!("{t:?} was not added"))))
            .collect()
    }

    /// The id of a token (`",</w>"`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(path)
    }

    fn cases() -> Vec<(String, Vec<u32>)> {
        let cases: Value =
            serde_json::from_slice(&std::fs::read(fixture("tokenizer/tokenizer_cases.json")).unwrap()).unwrap();
        cases
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let ids = c["hf_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
                (c["prompt"].as_str().unwrap().to_string(), ids)
            })
            .collect()
    }

    fn check_all(tok: &ClipTokenizer) {
        let cases = cases();
        assert_eq!(cases.len(), 21);
        for (prompt, want) in cases {
            let got = tok.encode(&prompt).unwrap();
            let mut padded = want.clone();
            padded.resize(77, 49407);
            assert_eq!(got.ids, padded, "{prompt:?}");
            // The fixture stores the ids up to and including the first end-of-text.
            let first_eos = got.ids.iter().position(|&id| id == tok.eos).unwrap();
            assert_eq!(got.ids[..=first_eos], want[..], "{prompt:?}");
        }
    }

    #[test]
    fn reproduces_transformers_ids_from_tokenizer_json() {
        check_all(&ClipTokenizer::from_dir(&fixture("tiny-sd/tokenizer")).unwrap());
    }

    #[test]
    fn reproduces_transformers_ids_from_vocab_and_merges() {
        let dir = fixture("tokenizer");
        let (vocab, merges) =
            (std::fs::read(dir.join("vocab.json")).unwrap(), std::fs::read(dir.join("merges.txt")).unwrap());
        let tok = ClipTokenizer::from_files(TokenizerFiles {
            vocab_json: Some(&vocab),
            merges_txt: Some(&merges),
            ..Default::default()
        })
        .unwrap();
        check_all(&tok);
    }

    #[test]
    fn long_prompts_are_truncated_with_eos_last_and_the_drop_reported() {
        let tok = ClipTokenizer::from_dir(&fixture("tiny-sd/tokenizer")).unwrap();
        let prompt = "castle ".repeat(500);
        let e = tok.encode(&prompt).unwrap();
        assert_eq!(e.ids.len(), 77);
        assert_eq!((e.ids[0], e.ids[76]), (tok.bos, tok.eos));
        assert_eq!(e.length, 77);
        assert_eq!(e.truncated, 500 + 2 - 77);
        let empty = tok.encode("").unwrap();
        assert_eq!((empty.length, empty.truncated, &empty.ids[..3]), (2, 0, &[49406, 49407, 49407][..]));
    }

    #[test]
    fn odd_input_does_not_panic() {
        let tok = ClipTokenizer::from_dir(&fixture("tiny-sd/tokenizer")).unwrap();
        for text in [
            "nul\0byte",
            "\u{202e}rtl override עברית العربية",
            "\u{fffd}\u{fffd}",
            "\u{1F600}".repeat(300).as_str(),
            "\t\n\r",
        ] {
            let e = tok.encode(text).unwrap();
            assert_eq!(e.ids.len(), 77, "{text:?}");
        }
    }

    #[test]
    fn the_pad_token_comes_from_the_config() {
        let json = std::fs::read(fixture("tiny-sd/tokenizer/tokenizer.json")).unwrap();
        // SD 2.x repos pad with "!" (id 0).
        let config = br#"{"pad_token": "!", "model_max_length": 77}"#;
        let tok = ClipTokenizer::from_files(TokenizerFiles {
            tokenizer_json: Some(&json),
            tokenizer_config_json: Some(config),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(tok.pad, 0);
        assert_eq!(tok.encode("a cat").unwrap().ids[4..], [0; 73]);
    }

    #[test]
    fn missing_and_broken_files_are_typed_errors() {
        assert_eq!(ClipTokenizer::from_files(TokenizerFiles::default()).err(), Some(TokenizerError::MissingFiles));
        let broken = ClipTokenizer::from_files(TokenizerFiles { tokenizer_json: Some(b"{"), ..Default::default() });
        assert!(matches!(broken.err(), Some(TokenizerError::Invalid { file: "tokenizer.json", .. })));
        let json = std::fs::read(fixture("tiny-sd/tokenizer/tokenizer.json")).unwrap();
        let bad_pad = ClipTokenizer::from_files(TokenizerFiles {
            tokenizer_json: Some(&json),
            tokenizer_config_json: Some(br#"{"pad_token": "<|nope|>"}"#),
            ..Default::default()
        });
        assert!(matches!(bad_pad.err(), Some(TokenizerError::UnknownToken { role: "pad", .. })));
        assert!(matches!(
            ClipTokenizer::from_dir(std::path::Path::new("/nonexistent")).err(),
            Some(TokenizerError::MissingFiles)
        ));
    }
}
