//! The CLIP text encoder (transformers' `CLIPTextModel`): SD 1.x's CLIP-L and SD 2.x's OpenCLIP-H.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor};

use super::{LayerNorm, linear};
use crate::config::{ConfigError, in_range, in_range_f64};
use crate::weights::{IntoTensorSource, LoadError, TensorLoader};

/// transformers' `CLIPTextConfig` (`text_encoder/config.json`); other fields of the file are ignored.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ClipTextConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Positions (the tokenizer's maximum length).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// MLP activation: `quick_gelu` (CLIP-L) or `gelu` (OpenCLIP-H).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Layer norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// End-of-text id; the pooled output is taken at its first occurrence.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// Width of `text_projection` (`CLIPTextModelWithProjection`, SDXL's `text_encoder_2`).
    #[serde(default = "default_projection")]
    pub projection_dim: usize,
}

// transformers' `CLIPTextConfig` defaults (eos 2 is its legacy value: the pooled output at the largest id).
fn default_positions() -> usize {
    77
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> u32 {
    2
}
fn default_projection() -> usize {
    512
}

#[derive(Module, Debug)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl ClipAttention {
    /// Causal multi-head self-attention. Shapes: `[batch, seq, hidden]` in and out.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let split = |t: Tensor<3>| t.reshape([b, l, self.heads, d / self.heads]).swap_dims(1, 2);
        let (q, k, v) = (
            split(linear(&self.q_proj, x.clone())),
            split(linear(&self.k_proj, x.clone())),
            split(linear(&self.v_proj, x)),
        );
        // Our kernel where it runs: burn's attention is a large shader (SwiftShader compiles it for
        // ~1 s in a cold first prompt) and slow on CPU-backed adapters (kernels::attention).
        let ours = match crate::kernels::choice().attention {
            true => crate::kernels::attention::attention_causal(&q, &k, &v),
            false => None,
        };
        let out = ours.unwrap_or_else(|| {
            let options = AttentionModuleOptions { is_causal: true, ..Default::default() };
            attention(q, k, v, None, None, options)
        });
        linear(&self.out_proj, out.swap_dims(1, 2).reshape([b, l, d]))
    }
}

#[derive(Module, Debug)]
struct ClipLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    quick_gelu: bool,
}

impl ClipLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let h = linear(&self.fc1, self.layer_norm2.forward(x.clone()));
        // quick_gelu(x) = x * sigmoid(1.702 x), as OpenAI's CLIP.
        let h = if self.quick_gelu { h.clone() * sigmoid(h * 1.702) } else { gelu(h) };
        x + linear(&self.fc2, h)
    }
}

/// The text encoder's outputs.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// After the final layer norm: what SD 1.x/2.x condition the UNet on. `[batch, seq, hidden]`
    pub last_hidden_state: Tensor<3>,
    /// The second-to-last layer's output, before the final layer norm (SDXL, "clip skip"). `[batch, seq, hidden]`
    pub penultimate_hidden_state: Tensor<3>,
    /// The pooled output ([`ClipTextModel::pooled`]) through `text_projection`
    /// (`CLIPTextModelWithProjection`'s `text_embeds`: SDXL's second encoder); `None`, and not computed,
    /// for a model without the projection. `[batch, projection_dim]`
    pub text_embeds: Option<Tensor<2>>,
}

/// A token embedding table kept in row blocks of at most [`TokenEmbedding::MAX_BLOCK_BYTES`]: CLIP-L's
/// 49408x768 table is 145 MiB as f32 and OpenCLIP-H's 193 MiB, past the 128 MiB that WebGPU guarantees
/// for one binding. A lookup picks each token's row from every block and keeps the one in range.
#[derive(Module, Debug)]
pub struct TokenEmbedding {
    blocks: Vec<Param<Tensor<2>>>,
}

impl TokenEmbedding {
    /// Largest block, counted as f32 (half of it on an f16 device).
    pub const MAX_BLOCK_BYTES: usize = 64 << 20;

    /// Rows in the table: one more than the largest id it can look up.
    pub fn rows(&self) -> usize {
        self.blocks.iter().map(|b| b.shape()[0]).sum()
    }

    /// Width of each row.
    pub fn width(&self) -> usize {
        self.blocks[0].shape()[1]
    }

    /// Appends rows (new tokens' vectors, `[n, d]`) as a block of their own: their ids follow the table's.
    pub fn append(&mut self, rows: Tensor<2>) {
        self.blocks.push(Param::from_tensor(rows));
    }

    /// Rows per block for `d`-wide embeddings.
    pub fn max_rows(d: usize) -> usize {
        (Self::MAX_BLOCK_BYTES / (4 * d)).max(1)
    }

    /// # Shapes
    /// - ids: `[batch, seq]`, each below the table's row count
    /// - output: `[batch, seq, d]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, l] = ids.dims();
        let ids = ids.reshape([b * l]);
        let mut out: Option<Tensor<2>> = None;
        let mut first = 0i64;
        for block in &self.blocks {
            let block = block.val();
            let [rows, d] = block.dims();
            let picked = if self.blocks.len() == 1 {
                block.select(0, ids.clone())
            } else {
                let local = ids.clone().sub_scalar(first).clamp(0, rows as i64 - 1);
                let outside = ids
                    .clone()
                    .greater_equal_elem(first)
                    .bool_and(ids.clone().lower_elem(first + rows as i64))
                    .bool_not();
                // Zeroed, not multiplied by a 0/1 mask: the sum is then exactly the row in range.
                block.select(0, local).mask_fill(outside.unsqueeze_dim::<2>(1).expand([b * l, d]), 0.0)
            };
            out = Some(match out {
                Some(sum) => sum + picked,
                None => picked,
            });
            first += rows as i64;
        }
        let out = out.expect("a table has at least one block");
        let d = out.dims()[1];
        out.reshape([b, l, d])
    }
}

/// transformers' `CLIPTextModel`.
#[derive(Module, Debug)]
pub struct ClipTextModel {
    /// The token table; textual-inversion embeddings append rows to it.
    pub token_embedding: TokenEmbedding,
    position_embedding: Embedding,
    layers: Vec<ClipLayer>,
    final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s projection of the pooled output (no bias).
    text_projection: Option<Linear>,
    eos_token_id: u32,
}

/// Key mapping for text encoder files: the Hub's SD repos prefix every name with `text_model.` and
/// store the `position_ids` buffer; transformers 5 writes neither.
pub fn clip_key_map(name: &str) -> Option<String> {
    let name = name.strip_prefix("text_model.").unwrap_or(name);
    (name != "embeddings.position_ids").then(|| name.to_string())
}

impl ClipTextConfig {
    /// Parses `text_encoder/config.json`; a missing required field is named in the error.
    /// transformers' rules: unknown fields (`torch_dtype`, `architectures`, ...) are ignored and `null`
    /// means the default ([`crate::config::as_diffusers_reads`]).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_value(crate::config::as_diffusers_reads(serde_json::from_str(text)?))
    }

    /// The file this config is read from.
    pub const FILE: &'static str = "text_encoder/config.json";

    /// Bounds and checks every field the encoder is built from (see the `MAX_*` consts of
    /// [`crate::config`]), before anything is; [`crate::model_folder::check_text_encoders`] checks it against the
    /// U-Net and the tokenizer.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.check_file(Self::FILE)
    }

    /// [`Self::check`] for the config read from `file` (SDXL's second encoder is `text_encoder_2/config.json`).
    pub fn check_file(&self, file: &str) -> Result<(), ConfigError> {
        use crate::config::{
            EPS_RANGE, MAX_HEADS, MAX_MLP_WIDTH, MAX_POSITIONS, MAX_TEXT_LAYERS, MAX_VOCAB, MAX_WIDTH,
        };
        in_range(file, "vocab_size", self.vocab_size, 1, MAX_VOCAB)?;
        in_range(file, "hidden_size", self.hidden_size, 1, MAX_WIDTH)?;
        in_range(file, "intermediate_size", self.intermediate_size, 1, MAX_MLP_WIDTH)?;
        in_range(file, "num_hidden_layers", self.num_hidden_layers, 1, MAX_TEXT_LAYERS)?;
        in_range(file, "num_attention_heads", self.num_attention_heads, 1, MAX_HEADS)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ConfigError::new(
                file,
                format!(
                    "num_attention_heads {} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        in_range(file, "max_position_embeddings", self.max_position_embeddings, 1, MAX_POSITIONS)?;
        in_range_f64(file, "layer_norm_eps", self.layer_norm_eps, EPS_RANGE)?;
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(ConfigError::new(
                file,
                format!("hidden_act {:?} is not supported (expected quick_gelu or gelu)", self.hidden_act),
            ));
        }
        in_range(file, "projection_dim", self.projection_dim, 1, MAX_WIDTH)?;
        if self.eos_token_id as usize >= self.vocab_size {
            return Err(ConfigError::new(
                file,
                format!("eos_token_id {} is not below vocab_size {}", self.eos_token_id, self.vocab_size),
            ));
        }
        Ok(())
    }

    /// Loads the model's weights from a safetensors source (either key naming scheme).
    pub fn load<S: IntoTensorSource>(&self, source: S, device: &Device) -> Result<ClipTextModel, LoadError> {
        self.load_model(source, false, device)
    }

    /// Loads `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`): the text model and `text_projection`.
    pub fn load_with_projection<S: IntoTensorSource>(
        &self,
        source: S,
        device: &Device,
    ) -> Result<ClipTextModel, LoadError> {
        self.load_model(source, true, device)
    }

    fn load_model<S: IntoTensorSource>(
        &self,
        source: S,
        projection: bool,
        device: &Device,
    ) -> Result<ClipTextModel, LoadError> {
        self.check()?;
        let mut w = TensorLoader::new(source, clip_key_map, device)?;
        let (d, ff, eps) = (self.hidden_size, self.intermediate_size, self.layer_norm_eps);
        let token_embedding = TokenEmbedding {
            blocks: w
                .row_blocks("embeddings.token_embedding.weight", [self.vocab_size, d], TokenEmbedding::max_rows(d))?
                .into_iter()
                .map(Param::from_tensor)
                .collect(),
        };
        let position_embedding =
            w.embedding("embeddings.position_embedding.weight", self.max_position_embeddings, d)?;
        let layers = (0..self.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layers.{i}");
                Ok(ClipLayer {
                    layer_norm1: LayerNorm::load(&mut w, &format!("{p}.layer_norm1"), d, eps)?,
                    self_attn: ClipAttention {
                        q_proj: w.linear(&format!("{p}.self_attn.q_proj"), d, d, true)?,
                        k_proj: w.linear(&format!("{p}.self_attn.k_proj"), d, d, true)?,
                        v_proj: w.linear(&format!("{p}.self_attn.v_proj"), d, d, true)?,
                        out_proj: w.linear(&format!("{p}.self_attn.out_proj"), d, d, true)?,
                        heads: self.num_attention_heads,
                    },
                    layer_norm2: LayerNorm::load(&mut w, &format!("{p}.layer_norm2"), d, eps)?,
                    fc1: w.linear(&format!("{p}.mlp.fc1"), d, ff, true)?,
                    fc2: w.linear(&format!("{p}.mlp.fc2"), ff, d, true)?,
                    quick_gelu: self.hidden_act == "quick_gelu",
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        let final_layer_norm = LayerNorm::load(&mut w, "final_layer_norm", d, eps)?;
        let text_projection =
            if projection { Some(w.linear("text_projection", d, self.projection_dim, false)?) } else { None };
        w.finish()?;
        Ok(ClipTextModel {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            eos_token_id: self.eos_token_id,
        })
    }
}

impl ClipTextModel {
    /// # Shapes
    /// - input_ids: `[batch, seq]` (seq <= max_position_embeddings)
    /// - outputs: see [`ClipTextOutput`]
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> ClipTextOutput {
        let [_, l] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device).reshape([1, l]);
        let mut x = self.token_embedding.forward(input_ids.clone()) + self.position_embedding.forward(positions);
        let mut penultimate = x.clone();
        for layer in &self.layers {
            penultimate = x.clone();
            x = layer.forward(x);
        }
        let last = self.final_layer_norm.forward(x);
        let text_embeds = self.text_projection.as_ref().map(|p| super::linear_2d(p, self.pooled(&last, input_ids)));
        ClipTextOutput { last_hidden_state: last, penultimate_hidden_state: penultimate, text_embeds }
    }

    /// transformers' `pooler_output`: `last_hidden_state` at each sequence's first end-of-text token.
    /// Only SDXL's second encoder uses it (through its projection), so [`Self::forward`] computes it only
    /// there.
    ///
    /// # Shapes
    /// - last_hidden_state: `[batch, seq, hidden]`, input_ids: `[batch, seq]`
    /// - output: `[batch, hidden]`
    pub fn pooled(&self, last_hidden_state: &Tensor<3>, input_ids: Tensor<2, Int>) -> Tensor<2> {
        let [b, _, d] = last_hidden_state.dims();
        // transformers: eos_token_id 2 marks old configs whose eos is the largest id (argmax); else the
        // first position of the eos id.
        let eos_index = if self.eos_token_id == 2 {
            input_ids.argmax(1)
        } else {
            input_ids.equal_elem(self.eos_token_id as i64).int().argmax(1)
        };
        last_hidden_state.clone().gather(1, eos_index.reshape([b, 1, 1]).expand([b, 1, d])).reshape([b, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD 2.x's text encoder config as transformers 4.2x wrote it: `torch_dtype`, `architectures`,
    /// `null` for fields it did not set, and the OpenCLIP-H settings.
    #[test]
    fn reads_transformers_4_configs_with_nulls() {
        let json = r#"{"_name_or_path": "hf-models/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
            "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "gelu",
            "hidden_size": 1024, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 4096,
            "layer_norm_eps": null, "max_position_embeddings": 77, "model_type": "clip_text_model",
            "num_attention_heads": 16, "num_hidden_layers": 23, "pad_token_id": 1, "projection_dim": 512,
            "torch_dtype": "float32", "transformers_version": "4.25.0.dev0", "vocab_size": 49408}"#;
        let c = ClipTextConfig::from_json(json).unwrap();
        assert_eq!((c.num_hidden_layers, c.hidden_act.as_str(), c.layer_norm_eps), (23, "gelu", 1e-5));
        let err = ClipTextConfig::from_json(&json.replace("\"vocab_size\": 49408", "\"vocab_size\": null"));
        assert!(err.unwrap_err().to_string().contains("vocab_size"));
    }

    #[test]
    fn token_embedding_in_blocks_equals_one_table() {
        let device = Device::flex();
        let table = Tensor::<2>::random([10, 3], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let ids = Tensor::<2, Int>::from_ints([[0, 3, 4, 9], [8, 7, 5, 1]], &device);
        let expected = table.clone().select(0, ids.clone().reshape([8])).reshape([2, 4, 3]);
        for rows in [[10, 0, 0], [4, 4, 2], [3, 3, 4], [1, 8, 1]] {
            let mut blocks = Vec::new();
            let mut first = 0;
            for r in rows.into_iter().filter(|&r| r > 0) {
                blocks.push(Param::from_tensor(table.clone().narrow(0, first, r)));
                first += r;
            }
            let embedding = TokenEmbedding { blocks };
            let got = embedding.forward(ids.clone());
            assert_eq!(got.into_data(), expected.clone().into_data(), "blocks of {rows:?}");
        }
        assert_eq!(TokenEmbedding::max_rows(768), 21845, "CLIP-L: 3 blocks of at most 64 MiB");
    }
}
