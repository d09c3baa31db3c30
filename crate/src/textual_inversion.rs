//! Textual-inversion embeddings: learned vectors for a new word. As diffusers'
//! `load_textual_inversion`: the trigger word (A1111: the file's name) and, for an embedding of n
//! vectors, `word_1` .. `word_{n-1}` become tokens of the tokenizer, matched whole, their vectors rows
//! appended to the text encoder's token table; a prompt's `word` reads as `word word_1 ...`.
//!
//! Files: safetensors only (no pickles): A1111's `emb_params` `[n, d]`, `string_to_param.*`, or any
//! file of one tensor (diffusers' `learned_embeds.safetensors`: `{"<token>": [d]}`).

use crate::weights::{ByteSource, SafetensorsReader, TensorInfo};

/// Why an embedding cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbeddingError {
    #[error("embedding {token}: {message}")]
    Invalid { token: String, message: String },
}

/// Most vectors one embedding may have (a whole chunk of a prompt).
pub const MAX_VECTORS: usize = 75;

/// A textual-inversion embedding, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The trigger word.
    pub token: String,
    /// `count` rows of `width` values.
    pub vectors: Vec<f32>,
    pub count: usize,
    pub width: usize,
}

impl Embedding {
    /// Reads an embedding file for the trigger word `token`.
    pub fn from_source<B: ByteSource>(token: &str, source: B) -> Result<Self, EmbeddingError> {
        let invalid = |message: String| EmbeddingError::Invalid { token: token.to_string(), message };
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return Err(invalid("the trigger word must be one word".into()));
        }
        let mut reader = SafetensorsReader::new(source).map_err(|e| invalid(e.to_string()))?;
        let infos: Vec<TensorInfo> = reader.header().tensors().cloned().collect();
        let info = match infos.as_slice() {
            [one] => one.clone(),
            _ => infos
                .iter()
                .find(|i| i.name == "emb_params" || i.name.starts_with("string_to_param."))
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
                    invalid(format!("no emb_params or string_to_param tensor among {names:?} (SDXL embeddings are not supported yet)"))
                })?,
        };
        let (count, width) = match info.shape.as_slice() {
            [d] => (1, *d),
            [n, d] => (*n, *d),
            other => return Err(invalid(format!("{} has shape {other:?}, not [vectors, width]", info.name))),
        };
        if count == 0 || count > MAX_VECTORS || width == 0 {
            return Err(invalid(format!("{count} vectors of {width} values (1 to {MAX_VECTORS} vectors)")));
        }
        let (_, vectors) = reader.read_f32(&info.name).map_err(|e| invalid(e.to_string()))?;
        if vectors.iter().any(|v| !v.is_finite()) {
            return Err(invalid("the vectors are not all finite".into()));
        }
        Ok(Self { token: token.to_string(), vectors, count, width })
    }

    /// A1111's short hash of an embedding file: its sha256, 12 hex digits.
    pub fn short_hash(file: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        format!("{:x}", Sha256::digest(file))[..12].to_string()
    }

    /// The tokens it adds: `token`, `token_1` .. `token_{count-1}`.
    pub fn tokens(&self) -> Vec<String> {
        (0..self.count).map(|i| if i == 0 { self.token.clone() } else { format!("{}_{i}", self.token) }).collect()
    }

    /// `text` with each use of the trigger word spelled out as all its tokens (diffusers'
    /// `maybe_convert_prompt`).
    pub fn expand(&self, text: &str) -> String {
        if self.count == 1 || !text.contains(&self.token) {
            return text.to_string();
        }
        text.replace(&self.token, &self.tokens().join(" "))
    }
}
