//! diffusers' `Attention` (self and cross), the GEGLU `FeedForward` and `BasicTransformerBlock`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, FloatDType, Tensor};

use super::{LayerNorm, linear, linear_residual};
use crate::kernels::tune::{self, AttentionPick, AttentionShape, AttentionTuning, GegluPick, GegluShape, Tuning};
use crate::weights::{LoadError, TensorLoader, TensorSource};

/// Largest `[batch, heads, queries, keys]` score matrix (counted as f32) that one attention call may
/// materialise in the browser.
pub const MAX_SCORE_BYTES: usize = 32 << 20;

/// burn's `attention` (non-causal, default scale), in blocks of queries where it would materialise a
/// score matrix above [`MAX_SCORE_BYTES`]: exact, since each query row is independent.
///
/// On Flex our own tiled kernel runs instead ([`super::flex_attention`]: about 2x burn-flex's at 512 px),
/// and where [`crate::kernels::choice`] says so our online-softmax kernel ([`crate::kernels::attention`]:
/// 4-10x burn's on SwiftShader at the tiny and SD-shaped models' sizes).
/// Natively on wgpu, autotune picks a flash kernel, so burn never builds the score matrix. In the browser
/// autotune is off (see Cargo.toml), so burn takes its fallback, which does: 1 GiB for 512 px SD 1.5's
/// first self-attention (`[2, 8, 4096, 4096]`), 8x WebGPU's guaranteed
/// binding size. There the queries go through in blocks (128 rows at that shape: 32 MiB each).
///
/// # Shapes
/// - q: `[batch, heads, queries, head_dim]`
/// - k, v: `[batch, heads, keys, head_dim]`
/// - output: `[batch, heads, queries, head_dim]`
pub fn attention_in_blocks(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    #[cfg(not(target_arch = "wasm32"))]
    if q.device() == burn::tensor::Device::flex()
        && let Some(out) = super::flex_attention::attention(q.clone(), k.clone(), v.clone())
    {
        return out;
    }
    if crate::kernels::choice().attention
        && let Some(out) = crate::kernels::attention::attention(&q, &k, &v)
    {
        return out;
    }
    let [b, h, queries, _] = q.dims();
    let keys = k.dims()[2];
    let rows = if cfg!(target_arch = "wasm32") { (MAX_SCORE_BYTES / (4 * b * h * keys)).max(1) } else { queries };
    attention_query_blocks(q, k, v, rows)
}

/// burn's `attention` on `rows` queries at a time.
fn attention_query_blocks(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, rows: usize) -> Tensor<4> {
    let queries = q.dims()[2];
    if rows >= queries {
        return attention(q, k, v, None, None, AttentionModuleOptions::default());
    }
    let blocks = (0..queries)
        .step_by(rows)
        .map(|first| {
            let q = q.clone().narrow(2, first, rows.min(queries - first));
            // No mask, no causality: the blocks need no offsets.
            attention(q, k.clone(), v.clone(), None, None, AttentionModuleOptions::default())
        })
        .collect();
    Tensor::cat(blocks, 2)
}

/// Multi-head attention with bias-free q/k/v projections and a biased output projection; see
/// [`attention_in_blocks`] for how the score matrix stays small.
#[derive(Module, Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    /// `upcast_attention`: scores and softmax in f32 when the model computes in f16 (SD 2.1's scores
    /// overflow f16's 65504).
    upcast: bool,
}

/// [`attention_in_blocks`], in f32 when `upcast` asks for it and the inputs are f16 (as diffusers'
/// `upcast_attention` computes q·kᵀ and the softmax in f32); the output has the inputs' precision.
///
/// # Shapes
/// as [`attention_in_blocks`]
pub fn attention_upcast(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, upcast: bool) -> Tensor<4> {
    if !upcast || q.dtype() != DType::F16 {
        return attention_in_blocks(q, k, v);
    }
    let f32 = |t: Tensor<4>| t.cast(FloatDType::F32);
    attention_in_blocks(f32(q), f32(k), f32(v)).cast(FloatDType::F16)
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
        upcast: bool,
    ) -> Result<Self, LoadError> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: w.linear(&format!("{prefix}.to_q"), query_dim, inner, false)?,
            to_k: w.linear(&format!("{prefix}.to_k"), context_dim, inner, false)?,
            to_v: w.linear(&format!("{prefix}.to_v"), context_dim, inner, false)?,
            to_out: w.linear(&format!("{prefix}.to_out.0"), inner, query_dim, true)?,
            heads,
            upcast,
        })
    }

    /// # Shapes
    /// - x: `[batch, queries, query_dim]`
    /// - context: `[batch, keys, context_dim]` (`None`: self-attention)
    /// - residual: `[batch, queries, query_dim]`, added to the output (by the output projection's
    ///   kernel where ours runs)
    /// - output: `[batch, queries, query_dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>, residual: Option<Tensor<3>>) -> Tensor<3> {
        let context = context.cloned().unwrap_or_else(|| x.clone());
        let q = linear(&self.to_q, x);
        let k = linear(&self.to_k, context.clone());
        let v = linear(&self.to_v, context);
        let out = attention_heads(q, k, v, self.heads, self.upcast);
        linear_residual(&self.to_out, out, residual)
    }
}

/// [`attention_upcast`] on the projections as they come: our kernel takes them without swapping
/// heads and tokens ([`crate::kernels::attention::attention_tokens`]; it computes in f32, so it also
/// upcasts), burn's op after the swaps.
///
/// # Shapes
/// - q: `[batch, queries, heads * head_dim]`
/// - k, v: `[batch, keys, heads * head_dim]`
/// - output: `[batch, queries, heads * head_dim]`
pub fn attention_heads(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, upcast: bool) -> Tensor<3> {
    // Kernels measured on this device for the shape ([`crate::kernels::tune`]).
    if crate::kernels::is_cube(&q)
        && let Some(pick) = tune::attention_pick(attention_shape(&q, &v, heads, upcast))
        && let Some(out) = run_attention(pick, &q, &k, &v, heads, upcast)
    {
        return out;
    }
    if crate::kernels::choice().attention
        && let Some(out) = crate::kernels::attention::attention_tokens(&q, &k, &v, heads)
    {
        return out;
    }
    let split = |t: Tensor<3>| {
        let [b, n, d] = t.dims();
        t.reshape([b, n, heads, d / heads]).swap_dims(1, 2)
    };
    let out = attention_upcast(split(q), split(k), split(v), upcast);
    let [b, h, n, d] = out.dims();
    out.swap_dims(1, 2).reshape([b, n, h * d])
}

/// The tuner's key for [`attention_heads`]' operands.
fn attention_shape(q: &Tensor<3>, v: &Tensor<3>, heads: usize, upcast: bool) -> AttentionShape {
    let [batch, queries, width] = q.dims();
    let [_, keys, v_width] = v.dims();
    let (head_dim, value_dim) = (width / heads.max(1), v_width / heads.max(1));
    let f16 = q.dtype() == DType::F16;
    AttentionShape { batch, heads, queries, keys, head_dim, value_dim, f16, upcast }
}

/// [`attention_heads`] by `pick`: burn's op (in the browser in query blocks, see
/// [`attention_in_blocks`]), our kernel, or matmul + softmax in f32 in query blocks whose scores stay
/// within [`MAX_SCORE_BYTES`] (everywhere); `None` where ours declines.
///
/// # Shapes
/// as [`attention_heads`]
fn run_attention(
    pick: AttentionPick,
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
    upcast: bool,
) -> Option<Tensor<3>> {
    if pick == AttentionPick::Ours {
        return crate::kernels::attention::attention_tokens(q, k, v, heads);
    }
    let split = |t: &Tensor<3>| {
        let [b, n, d] = t.dims();
        t.clone().reshape([b, n, heads, d / heads]).swap_dims(1, 2)
    };
    let (q, k, v) = (split(q), split(k), split(v));
    let [b, h, queries, _] = q.dims();
    let keys = k.dims()[2];
    let rows = (MAX_SCORE_BYTES / (4 * b * h * keys).max(1)).max(1);
    let out = match pick {
        AttentionPick::Matmul => matmul_softmax(q, k, v, rows, upcast),
        _ if upcast && q.dtype() == DType::F16 => {
            let f32 = |t: Tensor<4>| t.cast(FloatDType::F32);
            let rows = if cfg!(target_arch = "wasm32") { rows } else { queries };
            attention_query_blocks(f32(q), f32(k), f32(v), rows).cast(FloatDType::F16)
        }
        _ => attention_query_blocks(q, k, v, if cfg!(target_arch = "wasm32") { rows } else { queries }),
    };
    let [b, h, n, d] = out.dims();
    Some(out.swap_dims(1, 2).reshape([b, n, h * d]))
}

/// `softmax(q kᵀ / sqrt(head_dim)) v` as two matmuls with the softmax between, in f32 (diffusers'
/// `upcast_attention` order: scores in f32 where `upcast`, probabilities back in the values'
/// precision), `rows` queries at a time.
///
/// # Shapes
/// as [`attention_in_blocks`]
pub fn matmul_softmax(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, rows: usize, upcast: bool) -> Tensor<4> {
    let [_, _, queries, head_dim] = q.dims();
    let dtype = v.dtype();
    let scale = 1.0 / (head_dim as f64).sqrt();
    let (q, k) = match upcast {
        true => (q.cast(FloatDType::F32), k.cast(FloatDType::F32)),
        false => (q, k),
    };
    let kt = k.swap_dims(2, 3);
    let block = |q: Tensor<4>| {
        let scores = (q.matmul(kt.clone()) * scale).cast(FloatDType::F32);
        let probs = burn::tensor::activation::softmax(scores, 3);
        let probs = if dtype == DType::F16 { probs.cast(FloatDType::F16) } else { probs };
        probs.matmul(v.clone())
    };
    if rows >= queries {
        return block(q);
    }
    let blocks = (0..queries).step_by(rows).map(|first| block(q.clone().narrow(2, first, rows.min(queries - first))));
    Tensor::cat(blocks.collect(), 2)
}

/// Measures each way to run an attention of `shape` on `device` ([`AttentionPick`]: burn's op first,
/// the reference) on random projections of that shape; as [`tune::measure_conv`] (`None`: burn's own
/// output could not be read; `errors` counts the device's GPU errors).
pub async fn measure_attention(
    shape: AttentionShape,
    device: &burn::tensor::Device,
    errors: fn() -> u32,
) -> Option<AttentionTuning> {
    let AttentionShape { batch, heads, queries, keys, head_dim, value_dim, f16, upcast } = shape;
    let dtype = if f16 { FloatDType::F16 } else { FloatDType::F32 };
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let random = |tokens, width| Tensor::<3>::random([batch, tokens, heads * width], normal, device).cast(dtype);
    let (q, k, v) = (random(queries, head_dim), random(keys, head_dim), random(keys, value_dim));
    let candidates = [AttentionPick::Burn, AttentionPick::Ours, AttentionPick::Matmul];
    let run = |pick| run_attention(pick, &q, &k, &v, heads, upcast);
    Some(Tuning::new(shape, tune::measure(&candidates, run, f16, errors).await?))
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

    /// In pieces of tokens whose projection `[batch, tokens, 2 * inner]` stays within
    /// [`MAX_BUFFER_BYTES`](crate::gpu::MAX_BUFFER_BYTES): at 768 px with guidance SD's first one
    /// would be 180 MiB in f32. Exact: every token is independent here.
    ///
    /// # Shapes
    /// - x: `[batch, tokens, dim]`, returned in the same shape
    pub fn forward(&self, x: Tensor<3>, residual: Option<Tensor<3>>) -> Tensor<3> {
        let [batch, tokens, _] = x.dims();
        let projected = self.proj.weight.dims()[1];
        let bytes_per_token = (batch * projected * x.dtype().size()) as u64;
        let piece = ((crate::gpu::MAX_BUFFER_BYTES / bytes_per_token.max(1)) as usize).max(1);
        self.forward_in_pieces(x, residual, piece.min(tokens))
    }

    /// [`Self::forward`] on `piece` tokens at a time.
    pub fn forward_in_pieces(&self, x: Tensor<3>, residual: Option<Tensor<3>>, piece: usize) -> Tensor<3> {
        let tokens = x.dims()[1];
        if piece >= tokens {
            return self.forward_all(x, residual);
        }
        let narrow = |t: &Tensor<3>, first: usize| t.clone().narrow(1, first, piece.min(tokens - first));
        let pieces = (0..tokens)
            .step_by(piece)
            .map(|first| self.forward_all(narrow(&x, first), residual.as_ref().map(|r| narrow(r, first))));
        Tensor::cat(pieces.collect(), 1)
    }

    fn forward_all(&self, x: Tensor<3>, residual: Option<Tensor<3>>) -> Tensor<3> {
        let h = linear(&self.proj, x);
        let [b, n, width] = h.dims();
        let (rows, inner) = (b * n, width / 2);
        let h = h.reshape([rows, width]);
        // The kernels measured for the shape on this device ([`tune`]), else ours where the
        // device's choice says so.
        let measured = || tune::geglu_pick(GegluShape { rows, inner, f16: h.dtype() == DType::F16 });
        let default = || if crate::kernels::choice().geglu { GegluPick::Ours } else { GegluPick::Burn };
        let pick = crate::kernels::is_cube(&h).then(measured).flatten().unwrap_or_else(default);
        let activated = tune::run_geglu(pick, &h)
            .unwrap_or_else(|| tune::run_geglu(GegluPick::Burn, &h).expect("burn's runs every shape"));
        linear_residual(&self.out, activated.reshape([b, n, inner]), residual)
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
        upcast: bool,
    ) -> Result<Self, LoadError> {
        let p = prefix;
        Ok(Self {
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), dim, 1e-5)?,
            attn1: Attention::load(w, &format!("{p}.attn1"), dim, dim, heads, head_dim, upcast)?,
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), dim, 1e-5)?,
            attn2: Attention::load(w, &format!("{p}.attn2"), dim, cross_attention_dim, heads, head_dim, upcast)?,
            norm3: LayerNorm::load(w, &format!("{p}.norm3"), dim, 1e-5)?,
            ff: FeedForward::load(w, &format!("{p}.ff"), dim)?,
        })
    }

    /// # Shapes
    /// - x: `[batch, tokens, dim]`, returned in the same shape
    /// - context: `[batch, text_tokens, cross_attention_dim]`
    pub fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None, Some(x));
        let x = self.attn2.forward(self.norm2.forward(x.clone()), Some(context), Some(x));
        self.ff.forward(self.norm3.forward(x.clone()), Some(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[test]
    fn attention_in_query_blocks_equals_one_call() {
        let device = Device::flex();
        let normal = Distribution::Normal(0.0, 1.0);
        let q = Tensor::<4>::random([2, 3, 10, 4], normal, &device);
        let k = Tensor::<4>::random([2, 3, 7, 4], normal, &device);
        let v = Tensor::<4>::random([2, 3, 7, 4], normal, &device);
        let whole = attention(q.clone(), k.clone(), v.clone(), None, None, AttentionModuleOptions::default());
        for rows in [1, 3, 9, 10, 64] {
            let blocks = attention_query_blocks(q.clone(), k.clone(), v.clone(), rows);
            blocks.into_data().assert_approx_eq::<f32>(&whole.clone().into_data(), Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn feed_forward_in_token_pieces_equals_one_call() {
        use burn::nn::LinearConfig;
        let device = burn::tensor::Device::flex();
        let ff =
            FeedForward { proj: LinearConfig::new(8, 64).init(&device), out: LinearConfig::new(32, 8).init(&device) };
        let x = Tensor::<3>::random([2, 13, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let residual = Tensor::<3>::random([2, 13, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let whole = ff.forward(x.clone(), Some(residual.clone()));
        for piece in [1, 4, 12, 13] {
            let pieces = ff.forward_in_pieces(x.clone(), Some(residual.clone()), piece);
            pieces.into_data().assert_approx_eq::<f32>(&whole.clone().into_data(), Tolerance::absolute(1e-6));
        }
    }
}
