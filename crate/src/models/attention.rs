//! diffusers' `Attention` (self and cross), the GEGLU `FeedForward` and `BasicTransformerBlock`.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::linear;
use crate::weights::{LoadError, TensorLoader, TensorSource};

/// Multi-head attention with bias-free q/k/v projections and a biased output projection.
///
/// burn's fused `attention` op never materialises the `[batch, heads, queries, keys]` score matrix: at
/// 512 px SD 1.5's first self-attention would need 1 GiB for it, past every browser's buffer limit.
#[derive(Module, Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    /// `context_dim` is the key/value input width: the query width for self-attention, the text
    /// embedding width for cross-attention.
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self, LoadError> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: w.linear(&format!("{prefix}.to_q"), query_dim, inner, false)?,
            to_k: w.linear(&format!("{prefix}.to_k"), context_dim, inner, false)?,
            to_v: w.linear(&format!("{prefix}.to_v"), context_dim, inner, false)?,
            to_out: w.linear(&format!("{prefix}.to_out.0"), inner, query_dim, true)?,
            heads,
        })
    }

    /// # Shapes
    /// - x: `[batch, queries, query_dim]`
    /// - context: `[batch, keys, context_dim]` (`None`: self-attention)
    /// - output: `[batch, queries, query_dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        let context = context.cloned().unwrap_or_else(|| x.clone());
        let split = |t: Tensor<3>| {
            let [b, n, d] = t.dims();
            t.reshape([b, n, self.heads, d / self.heads]).swap_dims(1, 2)
        };
        let q = split(linear(&self.to_q, x));
        let k = split(linear(&self.to_k, context.clone()));
        let v = split(linear(&self.to_v, context));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        let [b, h, n, d] = out.dims();
        linear(&self.to_out, out.swap_dims(1, 2).reshape([b, n, h * d]))
    }
}

/// `FeedForward` with GEGLU: `net.0.proj` to twice the inner width, `value * gelu(gate)`, `net.2`.
#[derive(Module, Debug)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn load<S: TensorSource>(w: &mut TensorLoader<S>, prefix: &str, dim: usize) -> Result<Self, LoadError> {
        let inner = dim * 4;
        Ok(Self {
            proj: w.linear(&format!("{prefix}.net.0.proj"), dim, inner * 2, true)?,
            out: w.linear(&format!("{prefix}.net.2"), inner, dim, true)?,
        })
    }

    /// # Shapes
    /// - x: `[batch, tokens, dim]`, returned in the same shape
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = linear(&self.proj, x);
        let inner = h.dims()[2] / 2;
        let value = h.clone().narrow(2, 0, inner);
        let gate = h.narrow(2, inner, inner);
        linear(&self.out, value * gelu(gate))
    }
}

/// Self-attention, cross-attention on the text embeddings and the feed-forward, each pre-normed
/// (LayerNorm) and residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load<S: TensorSource>(
        w: &mut TensorLoader<S>,
        prefix: &str,
        dim: usize,
        heads: usize,
        head_dim: usize,
        cross_attention_dim: usize,
    ) -> Result<Self, LoadError> {
        let p = prefix;
        Ok(Self {
            norm1: w.layer_norm(&format!("{p}.norm1"), dim, 1e-5)?,
            attn1: Attention::load(w, &format!("{p}.attn1"), dim, dim, heads, head_dim)?,
            norm2: w.layer_norm(&format!("{p}.norm2"), dim, 1e-5)?,
            attn2: Attention::load(w, &format!("{p}.attn2"), dim, cross_attention_dim, heads, head_dim)?,
            norm3: w.layer_norm(&format!("{p}.norm3"), dim, 1e-5)?,
            ff: FeedForward::load(w, &format!("{p}.ff"), dim)?,
        })
    }

    /// # Shapes
    /// - x: `[batch, tokens, dim]`, returned in the same shape
    /// - context: `[batch, text_tokens, cross_attention_dim]`
    pub fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn1.forward(self.norm1.forward(x), None);
        let x = x.clone() + self.attn2.forward(self.norm2.forward(x), Some(context));
        x.clone() + self.ff.forward(self.norm3.forward(x))
    }
}
