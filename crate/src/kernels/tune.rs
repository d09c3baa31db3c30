//! Each convolution's, attention's, linear layer's, normalization's and GEGLU's kernels chosen per
//! shape by measuring on the device itself, for adapters whose choice nobody has measured
//! ([`super::Choice::tune`]: every real GPU so far).
//!
//! A fixed choice per adapter name ([`super::Choice::for_adapter`]) needs someone to have measured that
//! GPU; everywhere else burn's kernels ran, whose 3x3 convolution without cooperative matrices (the
//! browser) is burn's direct kernel, 1-2% of an H100's peak. Here the shapes a generation runs are
//! recorded on first sight ([`conv_pick`] and its siblings); at a step boundary the pipeline measures
//! each once ([`pending`], `models::tuning::measure_pending`): burn's op and each of our kernels (the
//! convolution's implicit GEMM in a few tilings and its lane kernel, ...), on random inputs of the
//! same shape, each checked against burn's output first (a kernel a driver miscompiles is dropped, not
//! timed: cubecl's own autotune is off in the browser because it cannot do that check there), then
//! timed; the fastest is used from then on. The ops whose fallback is in `models` (attention, the
//! normalizations) are measured there. The table can be saved and restored ([`export`], [`import`])
//! so a device measures once.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

use burn::tensor::{DType, Distribution, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use super::conv2d::{self, Add, Block, Tiling};
use super::norm::Layout;

/// A tuner key's work: what [`Tuning`] reports rates of, and what orders the measuring (largest first).
pub trait Work {
    /// Floating-point operations (a multiply-add counts 2).
    fn flops(&self) -> f64;
    /// Bytes read and written at least once (operands and output).
    fn bytes(&self) -> f64;
}

/// Bytes per value.
fn width(f16: bool) -> f64 {
    if f16 { 2.0 } else { 4.0 }
}

/// A convolution as the tuner keys it: groups 1, dilation 1, square stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub stride: usize,
    /// (top, left, bottom, right).
    pub padding: [usize; 4],
    pub f16: bool,
}

impl ConvShape {
    /// The shape of `conv2d(x, weight)`.
    pub fn of(x: &Tensor<4>, weight: &Tensor<4>, stride: usize, padding: [usize; 4]) -> ConvShape {
        let [batch, c_in, height, width] = x.dims();
        let [c_out, _, kh, kw] = weight.dims();
        let f16 = x.dtype() == DType::F16;
        ConvShape { batch, c_in, height, width, c_out, kernel: [kh, kw], stride, padding, f16 }
    }

    fn output(&self) -> Option<[usize; 2]> {
        let [top, left, bottom, right] = self.padding;
        Some([
            conv2d::output_size(self.height, self.kernel[0], self.stride, top, bottom)?,
            conv2d::output_size(self.width, self.kernel[1], self.stride, left, right)?,
        ])
    }
}

impl Work for ConvShape {
    fn flops(&self) -> f64 {
        let [oh, ow] = self.output().unwrap_or([0, 0]);
        2.0 * (self.batch * self.c_out * oh * ow * self.c_in * self.kernel[0] * self.kernel[1]) as f64
    }

    fn bytes(&self) -> f64 {
        let [oh, ow] = self.output().unwrap_or([0, 0]);
        let [kh, kw] = self.kernel;
        let values = self.batch * (self.c_in * self.height * self.width + self.c_out * oh * ow)
            + self.c_out * self.c_in * kh * kw;
        values as f64 * width(self.f16)
    }
}

/// Which kernel runs a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConvPick {
    /// burn's `conv2d` (autotuned natively; its default kernels in the browser).
    Burn,
    /// Our implicit GEMM ([`conv2d::conv2d_tiled`]).
    Tiled(Tiling),
    /// Our lane kernel ([`conv2d::conv2d_blocked`]).
    Lanes(Block),
}

/// An attention as the tuner keys it (`[batch, tokens, heads * width]` projections, no mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub head_dim: usize,
    pub value_dim: usize,
    pub f16: bool,
    /// Scores and softmax in f32 for f16 inputs (`upcast_attention`).
    pub upcast: bool,
}

impl Work for AttentionShape {
    fn flops(&self) -> f64 {
        2.0 * (self.batch * self.heads * self.queries * self.keys * (self.head_dim + self.value_dim)) as f64
    }

    fn bytes(&self) -> f64 {
        let (q, kv) = (self.queries * (self.head_dim + self.value_dim), self.keys * (self.head_dim + self.value_dim));
        (self.batch * self.heads * (q + kv)) as f64 * width(self.f16)
    }
}

/// Which kernels run an attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttentionPick {
    /// burn's `attention` (a flash kernel natively by autotune; in the browser its fallback, in query
    /// blocks whose scores stay within 32 MiB).
    Burn,
    /// Our online-softmax kernel ([`super::attention::attention_tokens`]).
    Ours,
    /// Scores by burn's matmul, softmax in f32, then the values' matmul, in the same query blocks.
    Matmul,
}

/// A linear layer as the tuner keys it (`[rows, d_in] x [d_in, d_out]`, with or without a bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinearShape {
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub f16: bool,
}

impl Work for LinearShape {
    fn flops(&self) -> f64 {
        2.0 * (self.rows * self.d_in * self.d_out) as f64
    }

    fn bytes(&self) -> f64 {
        ((self.rows + self.d_out) * self.d_in + self.rows * self.d_out) as f64 * width(self.f16)
    }
}

/// Which kernel runs a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinearPick {
    /// burn's `linear` (its matmul, then the bias).
    Burn,
    /// Our row kernel ([`super::linear::linear`]).
    Rows,
    /// Our lane kernel ([`super::linear::linear_blocked`]) with `rows` x `cols` blocks.
    Lanes { rows: usize, cols: usize },
    /// Our convolution's implicit GEMM on 1x1 images ([`super::linear::linear_tiled`]).
    Tiled(Tiling),
}

/// A GroupNorm (over `[batch, channels, pixels]`, then SiLU where `silu`) or a LayerNorm (over the
/// last of `[rows, features]`), as the tuner keys them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NormShape {
    Group { batch: usize, channels: usize, pixels: usize, groups: usize, silu: bool, f16: bool },
    Layer { rows: usize, features: usize, f16: bool },
}

impl NormShape {
    pub fn values(&self) -> usize {
        match *self {
            NormShape::Group { batch, channels, pixels, .. } => batch * channels * pixels,
            NormShape::Layer { rows, features, .. } => rows * features,
        }
    }

    pub fn f16(&self) -> bool {
        match *self {
            NormShape::Group { f16, .. } | NormShape::Layer { f16, .. } => f16,
        }
    }
}

impl Work for NormShape {
    /// Two sums and a multiply-add per value (and SiLU's few).
    fn flops(&self) -> f64 {
        6.0 * self.values() as f64
    }

    fn bytes(&self) -> f64 {
        2.0 * self.values() as f64 * width(self.f16())
    }
}

/// Which kernels run a normalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NormPick {
    /// burn's ops (`models::normalization`'s row-wise statistics for GroupNorm, then SiLU; burn's
    /// `layer_norm`), in f32.
    Burn,
    /// Our one kernel ([`super::norm`]) in that layout.
    Ours(Layout),
}

/// The feed-forward's GEGLU (`h[.., :inner] * gelu(h[.., inner:])` over `[rows, 2 * inner]`), as the
/// tuner keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GegluShape {
    pub rows: usize,
    pub inner: usize,
    pub f16: bool,
}

impl Work for GegluShape {
    /// GELU's erf counted as ~10.
    fn flops(&self) -> f64 {
        14.0 * (self.rows * self.inner) as f64
    }

    fn bytes(&self) -> f64 {
        3.0 * (self.rows * self.inner) as f64 * width(self.f16)
    }
}

/// Which kernels run a GEGLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GegluPick {
    /// burn's ops: the two halves, GELU, a multiply.
    Burn,
    /// Our one kernel ([`super::geglu`]).
    Ours,
}

/// Every measured pick, as saved ([`export`]) and restored ([`import`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Picks {
    pub conv: Vec<(ConvShape, ConvPick)>,
    #[serde(default)]
    pub attention: Vec<(AttentionShape, AttentionPick)>,
    #[serde(default)]
    pub linear: Vec<(LinearShape, LinearPick)>,
    #[serde(default)]
    pub norm: Vec<(NormShape, NormPick)>,
    #[serde(default)]
    pub geglu: Vec<(GegluShape, GegluPick)>,
}

impl Picks {
    /// How many shapes they cover.
    pub fn len(&self) -> usize {
        self.conv.len() + self.attention.len() + self.linear.len() + self.norm.len() + self.geglu.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What measuring one shape found: each candidate's time (`None`: it declined the shape, or its output
/// disagreed with the reference's), and the pick.
#[derive(Clone, Debug, Serialize)]
pub struct Tuning<S, P> {
    pub shape: S,
    pub times_ms: Vec<(P, Option<f64>)>,
    pub pick: P,
    /// GFLOP/s and GB/s of the pick ([`Work`]).
    pub gflops: f64,
    pub gbs: f64,
}

impl<S: Work, P> Tuning<S, P> {
    /// What measuring `shape` found, the rates from `ms`, the pick's time.
    pub fn new(shape: S, (times_ms, pick, ms): (Vec<(P, Option<f64>)>, P, f64)) -> Self {
        let (gflops, gbs) = (shape.flops() / ms / 1e6, shape.bytes() / ms / 1e6);
        Tuning { shape, times_ms, pick, gflops, gbs }
    }
}

pub type ConvTuning = Tuning<ConvShape, ConvPick>;
pub type AttentionTuning = Tuning<AttentionShape, AttentionPick>;
pub type LinearTuning = Tuning<LinearShape, LinearPick>;
pub type NormTuning = Tuning<NormShape, NormPick>;
pub type GegluTuning = Tuning<GegluShape, GegluPick>;

#[derive(Default)]
struct Table {
    /// Recording new shapes ([`super::Choice::tune`], or [`set_recording`]).
    recording: Option<bool>,
    /// The adapter the picks were measured on ([`set_adapter`]).
    adapter: Option<String>,
    /// Each shape seen: its pick once measured, `None` until then.
    conv: HashMap<ConvShape, Option<ConvPick>>,
    attention: HashMap<AttentionShape, Option<AttentionPick>>,
    linear: HashMap<LinearShape, Option<LinearPick>>,
    norm: HashMap<NormShape, Option<NormPick>>,
    geglu: HashMap<GegluShape, Option<GegluPick>>,
}

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(Default::default);

fn table() -> std::sync::RwLockReadGuard<'static, Table> {
    TABLE.read().unwrap_or_else(|e| e.into_inner())
}

fn table_mut() -> std::sync::RwLockWriteGuard<'static, Table> {
    TABLE.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether new shapes are recorded for measuring: the adapter's [`super::Choice::tune`] unless set here.
pub fn recording() -> bool {
    table().recording.unwrap_or_else(|| super::choice().tune)
}

/// Records new shapes (or not) whatever the adapter's choice; `None` returns to it.
pub fn set_recording(on: Option<bool>) {
    table_mut().recording = on;
}

/// Records the adapter the kernels now run on; picks measured on another one are forgotten, with the
/// shapes waiting for measuring. A device lost and made again may come from another adapter (the
/// browser falls back from a removed or reset discrete GPU to the integrated one, or to its software
/// one), and a tiling measured fastest on one GPU can be a poor pick on the next. (The first adapter
/// keeps what was imported before it.)
pub fn set_adapter(name: &str) {
    let mut table = table_mut();
    if table.adapter.as_deref().is_some_and(|a| a != name) {
        let recording = table.recording;
        *table = Table { recording, ..Table::default() };
    }
    table.adapter = Some(name.to_string());
}

/// The measured pick for `shape`, if any; a shape not seen before is recorded for measuring
/// ([`pending`]) while [`recording`].
pub fn conv_pick(shape: ConvShape) -> Option<ConvPick> {
    pick_or_record(shape, |t| &mut t.conv)
}

/// The pick `picks` (one of the table's maps) holds for `shape`; a shape not there is recorded as
/// waiting for measuring while [`recording`].
fn pick_or_record<S: std::hash::Hash + Eq, P: Copy>(
    shape: S,
    picks: impl FnOnce(&mut Table) -> &mut HashMap<S, Option<P>>,
) -> Option<P> {
    let record = recording();
    let mut table = table_mut();
    let picks = picks(&mut table);
    match picks.get(&shape) {
        Some(pick) => *pick,
        None => {
            if record {
                picks.insert(shape, None);
            }
            None
        }
    }
}

/// Sets `shape`'s pick (tests, and [`import`]).
pub fn set_conv_pick(shape: ConvShape, pick: ConvPick) {
    table_mut().conv.insert(shape, Some(pick));
}

/// The measured pick for an attention of `shape`, if any (recorded as [`conv_pick`] records).
pub fn attention_pick(shape: AttentionShape) -> Option<AttentionPick> {
    pick_or_record(shape, |t| &mut t.attention)
}

/// Sets an attention's pick (tests, and [`import`]).
pub fn set_attention_pick(shape: AttentionShape, pick: AttentionPick) {
    table_mut().attention.insert(shape, Some(pick));
}

/// The measured pick for a linear layer of `shape`, if any (recorded as [`conv_pick`] records).
pub fn linear_pick(shape: LinearShape) -> Option<LinearPick> {
    pick_or_record(shape, |t| &mut t.linear)
}

/// Sets a linear layer's pick.
pub fn set_linear_pick(shape: LinearShape, pick: LinearPick) {
    table_mut().linear.insert(shape, Some(pick));
}

/// The measured pick for a normalization of `shape`, if any (recorded as [`conv_pick`] records).
pub fn norm_pick(shape: NormShape) -> Option<NormPick> {
    pick_or_record(shape, |t| &mut t.norm)
}

/// Sets a normalization's pick.
pub fn set_norm_pick(shape: NormShape, pick: NormPick) {
    table_mut().norm.insert(shape, Some(pick));
}

/// The measured pick for a GEGLU of `shape`, if any (recorded as [`conv_pick`] records).
pub fn geglu_pick(shape: GegluShape) -> Option<GegluPick> {
    pick_or_record(shape, |t| &mut t.geglu)
}

/// Sets a GEGLU's pick.
pub fn set_geglu_pick(shape: GegluShape, pick: GegluPick) {
    table_mut().geglu.insert(shape, Some(pick));
}

/// A shape recorded and not yet measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pending {
    Conv(ConvShape),
    Attention(AttentionShape),
    Linear(LinearShape),
    Norm(NormShape),
    Geglu(GegluShape),
}

/// Shapes recorded and not yet measured: the convolutions, the attentions, the linear layers, the
/// normalizations, then the GEGLUs (the kinds that take most of a call first), each largest first.
pub fn pending() -> Vec<Pending> {
    let table = table();
    let mut all = waiting(&table.conv, Pending::Conv);
    all.extend(waiting(&table.attention, Pending::Attention));
    all.extend(waiting(&table.linear, Pending::Linear));
    all.extend(waiting(&table.norm, Pending::Norm));
    all.extend(waiting(&table.geglu, Pending::Geglu));
    all
}

/// The shapes of one of the table's maps without a pick, largest first.
fn waiting<S: Work + Copy, P>(picks: &HashMap<S, Option<P>>, kind: fn(S) -> Pending) -> Vec<Pending> {
    let mut shapes: Vec<S> = picks.iter().filter(|(_, p)| p.is_none()).map(|(s, _)| *s).collect();
    shapes.sort_by(|a, b| b.flops().total_cmp(&a.flops()).then(b.bytes().total_cmp(&a.bytes())));
    shapes.into_iter().map(kind).collect()
}

/// [`pending`] where `device` can run them: none off cubecl devices (shapes are recorded on those only,
/// and another device would time burn's op alone).
pub fn pending_on(device: &burn::tensor::Device) -> Vec<Pending> {
    match super::is_cube(&Tensor::<1>::zeros([1], device)) {
        true => pending(),
        false => Vec::new(),
    }
}

/// Every measured pick, to save ([`import`] restores them), largest shapes first.
pub fn export() -> Picks {
    let table = table();
    Picks {
        conv: measured(&table.conv),
        attention: measured(&table.attention),
        linear: measured(&table.linear),
        norm: measured(&table.norm),
        geglu: measured(&table.geglu),
    }
}

/// The shapes of one of the table's maps with a pick, largest first (ties in a fixed order).
fn measured<S: Work + Copy + std::fmt::Debug, P: Copy>(picks: &HashMap<S, Option<P>>) -> Vec<(S, P)> {
    let mut all: Vec<(S, P)> = picks.iter().filter_map(|(s, p)| Some((*s, (*p)?))).collect();
    all.sort_by(|a, b| b.0.flops().total_cmp(&a.0.flops()).then(format!("{:?}", a.0).cmp(&format!("{:?}", b.0))));
    all
}

/// Bumped whenever a kernel or the candidates change, so that picks kept by an earlier build are
/// measured again rather than trusted ([`crate::gpu::GpuInfo::tuning_key`] includes it). (Adding a
/// kind of op does not: a record without it reads, and its shapes are measured.) 2: the vectorized
/// implicit GEMM ([`Tiling::vectors`]) among the convolution's and linear layer's candidates. 3: the
/// implicit GEMM stages f16 inputs as f32 (no conversions left in its inner loop), and its
/// vectorized loop reading each slice ahead ([`Tiling::prefetch`]) among the candidates.
pub const VERSION: u32 = 3;

/// Restores saved picks (those of shapes measured since are kept); a pick no kernel of this build can
/// run (a record from another build, or damaged) is left out, to be measured again.
pub fn import(picks: &Picks) {
    let conv = |pick: &ConvPick| match pick {
        ConvPick::Burn => true,
        ConvPick::Tiled(tiling) => tiling.valid(),
        ConvPick::Lanes(block) => block.valid(),
    };
    let linear = |pick: &LinearPick| match *pick {
        LinearPick::Burn | LinearPick::Rows => true,
        LinearPick::Lanes { rows, cols } => (1..=8).contains(&rows) && (1..=32).contains(&cols),
        LinearPick::Tiled(tiling) => tiling.valid(),
    };
    let mut table = table_mut();
    merge(&mut table.conv, &picks.conv, conv);
    merge(&mut table.attention, &picks.attention, |_| true);
    merge(&mut table.linear, &picks.linear, linear);
    merge(&mut table.norm, &picks.norm, |_| true);
    merge(&mut table.geglu, &picks.geglu, |_| true);
}

/// `saved`'s runnable picks into one of the table's maps, where it has none for the shape.
fn merge<S: std::hash::Hash + Eq + Copy, P: Copy>(
    table: &mut HashMap<S, Option<P>>,
    saved: &[(S, P)],
    runnable: impl Fn(&P) -> bool,
) {
    for (shape, pick) in saved.iter().filter(|(_, p)| runnable(p)) {
        table.entry(*shape).and_modify(|p| *p = p.or(Some(*pick))).or_insert(Some(*pick));
    }
}

/// The file natively kept picks live in (the browser keeps them in IndexedDB): `websd/kernel-picks.json`
/// under `XDG_CACHE_HOME` or `~/.cache`, a map from [`crate::gpu::GpuInfo::tuning_key`] to [`Picks`].
#[cfg(not(target_arch = "wasm32"))]
pub fn cache_file() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("websd").join("kernel-picks.json"))
}

/// The picks kept in `file` for `key`; none when there is no file, or it cannot be read (measured again).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_picks(file: &std::path::Path, key: &str) -> Picks {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut all: HashMap<String, Picks> = serde_json::from_str(&text).unwrap_or_default();
    all.remove(key).unwrap_or_default()
}

/// Keeps `picks` in `file` under `key`, beside other adapters' (written whole, then renamed into place,
/// so a run stopped halfway leaves the old file).
#[cfg(not(target_arch = "wasm32"))]
pub fn save_picks(file: &std::path::Path, key: &str, picks: &Picks) -> std::io::Result<()> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut all: std::collections::BTreeMap<String, Picks> = serde_json::from_str(&text).unwrap_or_default();
    all.insert(key.to_string(), picks.clone());
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = file.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_string_pretty(&all).map_err(std::io::Error::other)?)?;
    std::fs::rename(partial, file)
}

/// `conv2d(x, weight, bias) + add` by `pick`; `None` for [`ConvPick::Burn`] or where our kernel
/// declines (the caller then runs burn's).
pub fn run_conv(
    pick: ConvPick,
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: usize,
    padding: [usize; 4],
    add: Add,
) -> Option<Tensor<4>> {
    match pick {
        ConvPick::Burn => None,
        ConvPick::Tiled(tiling) => conv2d::conv2d_tiled(x, weight, bias, stride, padding, tiling, add),
        ConvPick::Lanes(block) => conv2d::conv2d_blocked(x, weight, bias, stride, padding, block, add),
    }
}

/// The kernels tried for `shape`: burn's, our lane kernel in the adapter's block, and the implicit GEMM
/// in the tilings [`Tiling::for_workgroups`] gives for 1 to 1024 workgroups in flight (a GPU's cores
/// are not known here; these cover one core to a large GPU).
pub fn candidates(shape: &ConvShape) -> Vec<ConvPick> {
    let Some([oh, ow]) = shape.output() else { return vec![ConvPick::Burn] };
    let pixels = shape.batch * oh * ow;
    let depth = shape.c_in * shape.kernel[0] * shape.kernel[1];
    let mut picks = vec![ConvPick::Burn];
    let accumulators = super::choice().lane_accumulators;
    picks.push(ConvPick::Lanes(Block::for_shape(shape.c_out, shape.batch, oh, ow, accumulators)));
    picks.extend(tilings(shape.c_out, pixels, depth).into_iter().map(ConvPick::Tiled));
    picks
}

/// The implicit GEMM's tilings tried for an output of `c_out` x `pixels` over `depth`: those
/// [`Tiling::for_workgroups`] gives for 1 to 1024 workgroups in flight, each once, then each of them
/// in the vectorized kernel where its tile allows, then those reading each slice ahead.
fn tilings(c_out: usize, pixels: usize, depth: usize) -> Vec<Tiling> {
    let mut tilings: Vec<Tiling> = Vec::new();
    for workgroups in [1, 32, 256, 1024] {
        let tiling = Tiling::for_workgroups(c_out, pixels, depth, workgroups);
        if !tilings.contains(&tiling) {
            tilings.push(tiling);
        }
    }
    let vectorized: Vec<Tiling> = tilings.iter().filter_map(|t| t.vectorized()).collect();
    let prefetched: Vec<Tiling> = vectorized.iter().filter_map(|t| t.prefetched()).collect();
    tilings.extend(vectorized);
    tilings.extend(prefetched);
    tilings
}

/// `x W + b (+ residual)` by `pick`: burn's `linear` (then an add), or our kernel (`None` where it
/// declines: the caller then runs burn's).
///
/// # Shapes
/// - x: `[rows, d_in]`, weight: `[d_in, d_out]`, bias: `[d_out]`
/// - residual, output: `[rows, d_out]`
pub fn run_linear(
    pick: LinearPick,
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
) -> Option<Tensor<2>> {
    use super::linear;
    match pick {
        LinearPick::Burn => Some(burn_linear(x, weight, bias, residual)),
        LinearPick::Rows => linear::linear(x, weight, bias, residual),
        LinearPick::Lanes { rows, cols } => linear::linear_blocked(x, weight, bias, residual, (rows, cols)),
        LinearPick::Tiled(tiling) => linear::linear_tiled(x, weight, bias, residual, Some(tiling)),
    }
}

/// burn's linear layer, then the residual: what runs where ours do not.
pub(crate) fn burn_linear(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
) -> Tensor<2> {
    let y = burn::tensor::module::linear(x.clone(), weight.clone(), bias.cloned());
    match residual {
        Some(r) => y + r.clone(),
        None => y,
    }
}

/// The kernels tried for a linear layer of `shape`: burn's, our row kernel, our lane kernel in the
/// adapter's block, and the implicit GEMM in the tilings the convolution tries.
pub fn linear_candidates(shape: &LinearShape) -> Vec<LinearPick> {
    let LinearShape { rows, d_in, d_out, .. } = *shape;
    let (r, c) = super::linear::lane_block(rows, d_out, super::choice().lane_accumulators);
    let mut picks = vec![LinearPick::Burn, LinearPick::Rows, LinearPick::Lanes { rows: r, cols: c }];
    picks.extend(tilings(d_out, rows, d_in).into_iter().map(LinearPick::Tiled));
    picks
}

/// Measures every candidate for a linear layer of `shape` on `device`, as [`measure_conv`].
pub async fn measure_linear(
    shape: LinearShape,
    device: &burn::tensor::Device,
    errors: fn() -> u32,
) -> Option<LinearTuning> {
    let LinearShape { rows, d_in, d_out, f16 } = shape;
    let dtype = if f16 { FloatDType::F16 } else { FloatDType::F32 };
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<2>::random([rows, d_in], normal, device).cast(dtype);
    let weight = (Tensor::<2>::random([d_in, d_out], normal, device) / (d_in as f64).sqrt()).cast(dtype);
    let bias = Tensor::<1>::random([d_out], normal, device).cast(dtype);
    let run = |pick| run_linear(pick, &x, &weight, Some(&bias), None);
    Some(Tuning::new(shape, measure(&linear_candidates(&shape), run, f16, errors).await?))
}

/// `h[.., :inner] * gelu(h[.., inner:])` by `pick` (`None` where ours declines).
///
/// # Shapes
/// - h: `[rows, 2 * inner]`
/// - output: `[rows, inner]`
pub fn run_geglu(pick: GegluPick, h: &Tensor<2>) -> Option<Tensor<2>> {
    match pick {
        GegluPick::Ours => super::geglu::geglu(h),
        GegluPick::Burn => {
            let inner = h.dims()[1] / 2;
            Some(h.clone().narrow(1, 0, inner) * burn::tensor::activation::gelu(h.clone().narrow(1, inner, inner)))
        }
    }
}

/// Measures burn's ops and our kernel for a GEGLU of `shape` on `device`, as [`measure_conv`].
pub async fn measure_geglu(
    shape: GegluShape,
    device: &burn::tensor::Device,
    errors: fn() -> u32,
) -> Option<GegluTuning> {
    let dtype = if shape.f16 { FloatDType::F16 } else { FloatDType::F32 };
    let h = Tensor::<2>::random([shape.rows, 2 * shape.inner], Distribution::Normal(0.0, 1.0), device).cast(dtype);
    let run = |pick| run_geglu(pick, &h);
    Some(Tuning::new(shape, measure(&[GegluPick::Burn, GegluPick::Ours], run, shape.f16, errors).await?))
}

/// The largest difference from burn's output a candidate may show, relative to the output's largest
/// value: far above any summation order's rounding (f32 ~1e-6, f16 ~1e-3 here), far below a wrong
/// result.
fn tolerance(f16: bool) -> f32 {
    if f16 { 3e-2 } else { 1e-3 }
}

/// Seconds of timed runs aimed at per round (after one untimed run, which compiles it): enough runs
/// that a readback's latency (milliseconds in a browser) does not decide between small kernels.
const ROUND_SECONDS: f64 = 0.03;
/// Timed runs per round, at most.
const MAX_REPS: usize = 256;
/// Rounds per candidate; the fastest counts.
const ROUNDS: usize = 2;

/// Measures every candidate for `shape` on `device` and returns what it found (without recording it);
/// `None` where burn's own output could not be read (a lost device): nothing to compare with.
/// `errors` counts the device's GPU errors (`crate::gpu::uncaptured_errors`): a candidate during
/// whose run one came is not picked.
pub async fn measure_conv(shape: ConvShape, device: &burn::tensor::Device, errors: fn() -> u32) -> Option<ConvTuning> {
    let [kh, kw] = shape.kernel;
    let dtype = if shape.f16 { FloatDType::F16 } else { FloatDType::F32 };
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<4>::random([shape.batch, shape.c_in, shape.height, shape.width], normal, device).cast(dtype);
    let fan_in = (shape.c_in * kh * kw) as f64;
    let weight = (Tensor::<4>::random([shape.c_out, shape.c_in, kh, kw], normal, device) / fan_in.sqrt()).cast(dtype);
    let bias = Tensor::<1>::random([shape.c_out], normal, device).cast(dtype);
    let run = |pick: ConvPick| -> Option<Tensor<4>> {
        match pick {
            ConvPick::Burn => Some(burn_conv(&x, &weight, Some(&bias), shape.stride, shape.padding)),
            _ => run_conv(pick, &x, &weight, Some(&bias), shape.stride, shape.padding, Add::NONE),
        }
    };
    Some(Tuning::new(shape, measure(&candidates(&shape), run, shape.f16, errors).await?))
}

/// Runs each of `candidates` once and checks it against the first's output (the reference, burn's
/// op), then times those that agree; returns each one's time (`None`: declined, disagreed, or a GPU
/// error came while it ran: a pipeline the browser refuses does not run, and its output buffer may
/// still hold an earlier candidate's agreeing values), the fastest and its time. `None` where the
/// reference could not be read back.
pub async fn measure<P: Copy, const D: usize>(
    candidates: &[P],
    run: impl Fn(P) -> Option<Tensor<D>>,
    f16: bool,
    errors: fn() -> u32,
) -> Option<(Vec<(P, Option<f64>)>, P, f64)> {
    let reference = run(candidates[0]).expect("the reference runs every shape");
    // Compared on the device (two values read back, not whole outputs: at 512 px and more those
    // are tens of MiB, which a browser would copy into the wasm heap twice). Relative to the
    // reference's largest value, however small (an attention over many keys averages to ~0.1).
    let scale = scalar(reference.clone().abs().max().reshape([1])).await.filter(|s| s.is_finite())?.max(1e-6);
    let mut times_ms: Vec<(P, Option<f64>)> = Vec::new();
    for &pick in candidates {
        let best_ms = times_ms.iter().filter_map(|(_, t)| *t).fold(f64::INFINITY, f64::min);
        let before = errors();
        let time = match run(pick) {
            None => None,
            Some(first) => match agrees(first, &reference, scale, f16).await {
                true => Some(time_ms(|| run(pick).expect("ran once"), best_ms).await),
                false => None,
            },
        };
        times_ms.push((pick, time.filter(|_| errors() == before)));
    }
    let (pick, ms) = times_ms
        .iter()
        .filter_map(|(p, t)| Some((*p, (*t)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((candidates[0], f64::NAN));
    Some((times_ms, pick, ms))
}

/// burn's convolution, as models::conv2d_with runs it where our kernels do not.
pub(crate) fn burn_conv(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: usize,
    [top, left, bottom, right]: [usize; 4],
) -> Tensor<4> {
    let options =
        burn::tensor::ops::ConvOptions::new_with_padding([stride; 2], [(top, bottom), (left, right)], [1, 1], 1);
    burn::tensor::module::conv2d(x.clone(), weight.clone(), bias.cloned(), options)
}

/// Milliseconds per run of `run`: one run to learn roughly how long it takes, then [`ROUNDS`] rounds
/// of as many as fit [`ROUND_SECONDS`] (at most [`MAX_REPS`]) queued back to back, each waited for
/// once; the fastest round. A candidate whose one run took over 4x `best_ms` (the fastest so far)
/// cannot be picked: that run is its time, and a slow kernel on a weak GPU is not run again.
async fn time_ms<const D: usize>(run: impl Fn() -> Tensor<D>, best_ms: f64) -> f64 {
    let start = web_time::Instant::now();
    finish(run()).await;
    let once = start.elapsed().as_secs_f64();
    if once * 1e3 > 4.0 * best_ms {
        return once * 1e3;
    }
    let reps = ((ROUND_SECONDS / once.max(1e-6)) as usize).clamp(1, MAX_REPS);
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = web_time::Instant::now();
        let mut last = None;
        for _ in 0..reps {
            last = Some(run());
        }
        finish(last.expect("at least one run")).await;
        best = best.min(start.elapsed().as_secs_f64() * 1e3 / reps as f64);
    }
    best
}

/// Waits until `t` is computed: reads back one value of it (the bytes must be touched: the data
/// can arrive after `into_data_async` returns).
async fn finish<const D: usize>(t: Tensor<D>) {
    let n = t.shape().num_elements();
    if let Ok(data) = t.reshape([n]).narrow(0, 0, 1).into_data_async().await {
        std::hint::black_box(data.as_bytes().first().copied());
    }
}

/// Whether `out` is `reference` within the tuner's tolerance (relative to `scale`, the reference's
/// largest magnitude) and has no NaN; computed on the device, two values read back.
pub async fn agrees<const D: usize>(out: Tensor<D>, reference: &Tensor<D>, scale: f32, f16: bool) -> bool {
    if out.dims() != reference.dims() {
        return false;
    }
    let diff = scalar((out.clone() - reference.clone()).abs().max().reshape([1])).await;
    let nan = scalar(out.is_nan().any().float().reshape([1])).await;
    diff.is_some_and(|d| d <= tolerance(f16) * scale) && nan == Some(0.0)
}

/// The one value of `t`, `None` where the readback fails.
async fn scalar(t: Tensor<1>) -> Option<f32> {
    let data = t.into_data_async().await.ok()?;
    data.convert::<f32>().try_into_vec::<f32>().ok()?.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A square `kernel`'s convolution padded by `kernel / 2` on every side.
    fn conv(
        batch: usize,
        c_in: usize,
        c_out: usize,
        [height, width]: [usize; 2],
        kernel: usize,
        stride: usize,
        f16: bool,
    ) -> ConvShape {
        let (kernel, padding) = ([kernel; 2], [kernel / 2; 4]);
        ConvShape { batch, c_in, height, width, c_out, kernel, stride, padding, f16 }
    }

    /// The table is the process's: tests that change it run one at a time.
    fn table_lock() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn another_adapter_forgets_the_picks_measured_on_the_last() {
        let _lock = table_lock();
        let (measured, waiting) = (conv(2, 3, 5, [6, 6], 3, 1, false), conv(2, 3, 7, [6, 6], 3, 1, false));
        let pick = ConvPick::Tiled(Tiling::SMALL);
        set_adapter("first GPU");
        set_recording(Some(true));
        set_conv_pick(measured, pick);
        assert_eq!(conv_pick(waiting), None);
        // The same adapter again (a device made after a loss on the same GPU) keeps them.
        set_adapter("first GPU");
        assert_eq!(conv_pick(measured), Some(pick));
        assert!(pending().contains(&Pending::Conv(waiting)));
        // Another adapter measures for itself.
        set_adapter("second GPU");
        assert_eq!(export().conv, Vec::new());
        assert!(pending().is_empty(), "the shapes waiting were the first adapter's");
        assert!(recording(), "set_recording outlives the adapter");
        assert_eq!(conv_pick(measured), None);
        assert!(pending().contains(&Pending::Conv(measured)), "measured again");
        set_recording(None);
    }

    #[test]
    fn recorded_shapes_wait_for_measuring() {
        let _lock = table_lock();
        let shape = conv(5, 3, 13, [2, 7], 1, 1, true);
        set_recording(Some(false));
        assert_eq!(conv_pick(shape), None);
        assert!(!pending().contains(&Pending::Conv(shape)), "not recorded while not recording");
        set_recording(Some(true));
        assert_eq!(conv_pick(shape), None);
        assert!(pending().contains(&Pending::Conv(shape)));
        set_conv_pick(shape, ConvPick::Burn);
        assert!(!pending().contains(&Pending::Conv(shape)));
        assert_eq!(conv_pick(shape), Some(ConvPick::Burn));
        set_recording(None);
    }

    #[test]
    fn picks_round_trip_through_export_and_import() {
        let _lock = table_lock();
        let shape = conv(3, 7, 11, [5, 9], 3, 2, false);
        let pick = ConvPick::Tiled(Tiling { bm: 16, bn: 128, splits: 2, ..Tiling::SMALL });
        let attention = AttentionShape {
            batch: 3,
            heads: 5,
            queries: 7,
            keys: 11,
            head_dim: 13,
            value_dim: 13,
            f16: true,
            upcast: true,
        };
        let linear = (LinearShape { rows: 3, d_in: 5, d_out: 7, f16: false }, LinearPick::Lanes { rows: 2, cols: 8 });
        let norm = (NormShape::Layer { rows: 3, features: 11, f16: true }, NormPick::Ours(Layout::Lane));
        let geglu = (GegluShape { rows: 3, inner: 13, f16: false }, GegluPick::Ours);
        import(&Picks {
            conv: vec![(shape, pick)],
            attention: vec![(attention, AttentionPick::Matmul)],
            linear: vec![linear],
            norm: vec![norm],
            geglu: vec![geglu],
        });
        assert_eq!(conv_pick(shape), Some(pick));
        assert_eq!(attention_pick(attention), Some(AttentionPick::Matmul));
        assert_eq!(linear_pick(linear.0), Some(linear.1));
        assert_eq!(norm_pick(norm.0), Some(norm.1));
        assert_eq!(geglu_pick(geglu.0), Some(geglu.1));
        let json = serde_json::to_string(&export()).unwrap();
        let back: Picks = serde_json::from_str(&json).unwrap();
        assert!(back.conv.contains(&(shape, pick)));
        assert!(back.attention.contains(&(attention, AttentionPick::Matmul)));
        assert!(back.linear.contains(&linear) && back.norm.contains(&norm) && back.geglu.contains(&geglu));
        // A pick this build cannot run is not imported (measured again instead).
        let odd = conv(1, 2, 3, [4, 4], 3, 1, false);
        let bad = Picks {
            conv: vec![
                (odd, ConvPick::Tiled(Tiling { bm: 48, bn: 128, ..Tiling::SMALL })),
                (conv(1, 2, 5, [4, 4], 3, 1, false), ConvPick::Lanes(Block { ch: 0, rows: 1, cols: 1, lanes: 8 })),
                (
                    conv(1, 2, 6, [4, 4], 3, 1, false),
                    ConvPick::Tiled(Tiling { bm: 16, bn: 128, vectors: true, ..Tiling::SMALL }),
                ),
                (conv(1, 2, 7, [4, 4], 3, 1, false), ConvPick::Tiled(Tiling { prefetch: true, ..Tiling::SMALL })),
            ],
            linear: vec![(
                LinearShape { rows: 9, d_in: 5, d_out: 7, f16: false },
                LinearPick::Lanes { rows: 1, cols: 4096 },
            )],
            ..Picks::default()
        };
        import(&bad);
        assert_eq!(table().conv.get(&odd), None);
        assert_eq!(table().conv.get(&conv(1, 2, 5, [4, 4], 3, 1, false)), None);
        assert_eq!(table().conv.get(&conv(1, 2, 6, [4, 4], 3, 1, false)), None, "no vectorized 16-row tile");
        assert_eq!(table().conv.get(&conv(1, 2, 7, [4, 4], 3, 1, false)), None, "no read-ahead without vectors");
        // A tiling stored before the vectorized kernel existed reads as the scalar kernel's.
        let old: Tiling = serde_json::from_str(r#"{"bm":64,"bn":64,"splits":1}"#).unwrap();
        assert_eq!(old, Tiling::SMALL);
        assert_eq!(table().linear.get(&bad.linear[0].0), None);
        // Natively, in a file per user, beside other adapters'.
        let file = std::env::temp_dir().join(format!("websd-picks-{}", std::process::id())).join("picks.json");
        save_picks(&file, "other", &Picks::default()).unwrap();
        let snapshot = export();
        save_picks(&file, "this", &snapshot).unwrap();
        assert_eq!(load_picks(&file, "this"), snapshot);
        assert_eq!(load_picks(&file, "other"), Picks::default());
        assert_eq!(load_picks(&file, "none"), Picks::default());
        std::fs::write(&file, "not json").unwrap();
        assert_eq!(load_picks(&file, "this"), Picks::default(), "a damaged file is measured again");
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
        // What earlier builds stored (convolutions only, then with attentions) still reads; their
        // linear layers, normalizations and GEGLUs are measured.
        let old: Picks =
            serde_json::from_str(&serde_json::to_string(&serde_json::json!({"conv": []})).unwrap()).unwrap();
        assert_eq!(old, Picks::default());
    }
}
