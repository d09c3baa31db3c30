//! 2-D convolution as an implicit GEMM, for the U-Net's and the VAE's convolutions on cubecl devices.
//!
//! burn 0.22's conv2d on wgpu autotunes between a direct kernel and implicit-GEMM kernels that all need
//! cooperative matrices, which WebGPU does not expose, so in the browser every 3x3 conv ran the direct
//! kernel (1-2% of an H100's f32 peak; ~37 ms a launch for the tiny model on SwiftShader). Here the
//! product is `out[c_out, pixels] = weight[c_out, c_in*kh*kw] x patches[c_in*kh*kw, pixels]`, where
//! the patch matrix is never written: each workgroup stages a `BK` slice of the weight rows and of the
//! gathered input patches in workgroup memory (in f32: f16 inputs are converted as they are staged)
//! and accumulates a `BM x BN` tile in f32 registers, then adds the bias. Tensors stay NCHW (burn's
//! conv permutes to NHWC and back around every call). Within WebGPU's default limits: 256
//! invocations, 16 KiB of workgroup memory.
//! A second version of its main loop ([`Tiling::vectors`]) stages and reads workgroup memory as
//! vectors of four and accumulates four outputs per add, and can read each slice from global memory
//! one step ahead ([`Tiling::prefetch`]); the device's measuring ([`super::tune`]) tries them all.

use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::MAX_GROUPS;

/// Reduction depth (input channel x tap) staged per step.
const BK: usize = 16;
/// Invocations per workgroup side: 16 x 16, each accumulating a `bm / 16 x bn / 16` block.
const SIDE: usize = 16;

/// A launch's geometry: the workgroup's output tile (`bm` channels x `bn` pixels) and how many
/// workgroups share one tile's reduction (split-K: each sums a contiguous range of `BK` slices into an
/// f32 buffer, and a second pass adds the partial sums and the bias). Large tiles reuse each staged
/// value more; short ones waste nothing on 16 or 32 channels (the tiny model, the VAE's ends); splits
/// keep the device busy when there are few output tiles (1280 channels at 8x8). Workgroup memory:
/// `16 x (bm + bn)` f32 values (f16 inputs too), at most 16 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Tiling {
    pub bm: usize,
    pub bn: usize,
    pub splits: usize,
    /// Workgroup memory staged and read four values at a time (`conv2d_igemm`'s `vectors`), for GPUs:
    /// there a lane loads 16 bytes in one instruction, so the inner loop issues a quarter of the
    /// scalar loop's loads from workgroup memory (one per 4 x 4 products instead of one per 4), and
    /// the accumulators add four at a time. Tiles of 64 and 128 only ([`Tiling::VECTOR_TILES`]). A
    /// stored pick from before it existed reads as scalar.
    #[serde(default)]
    pub vectors: bool,
    /// With `vectors`: each slice is read from global memory into registers one step ahead, while the
    /// workgroup multiplies the slice before it (`conv2d_igemm`'s `prefetch`). On a GPU the loads of
    /// the next slice are in flight during the multiply-adds instead of between them; a CPU
    /// rasterizer gains nothing (registers kept across a barrier cost it). A stored pick from before
    /// it existed reads as without.
    #[serde(default)]
    pub prefetch: bool,
}

impl Tiling {
    /// The tile the kernel was first measured with (SwiftShader, BENCHMARKS.md "Our kernels").
    pub const SMALL: Tiling = Tiling { bm: 64, bn: 64, splits: 1, vectors: false, prefetch: false };

    /// The tile shapes the vectorized kernel is compiled for: each invocation's rows and pixels are
    /// one or two runs of four.
    pub const VECTOR_TILES: [(usize, usize); 4] = [(64, 64), (64, 128), (128, 64), (128, 128)];

    /// This tiling in the vectorized kernel, where its tile allows it.
    pub fn vectorized(self) -> Option<Tiling> {
        Self::VECTOR_TILES.contains(&(self.bm, self.bn)).then_some(Tiling { vectors: true, ..self })
    }

    /// This vectorized tiling with the next slice read ahead ([`Tiling::prefetch`]).
    pub fn prefetched(self) -> Option<Tiling> {
        self.vectors.then_some(Tiling { prefetch: true, ..self })
    }

    /// Every tile shape the kernel is compiled for.
    pub const TILES: [(usize, usize); 6] = [(16, 128), (32, 128), (64, 64), (64, 128), (128, 64), (128, 128)];

    /// The largest tile that is not taller than the channels nor wider than the pixels (each rounded
    /// up to a power of two), with enough splits to give `workgroups` workgroups, each split at least
    /// 8 slices deep and at most 16 of them (SwiftShader's figures: BENCHMARKS.md "Our kernels").
    pub fn for_workgroups(c_out: usize, pixels: usize, depth: usize, workgroups: usize) -> Tiling {
        let (rows, cols) = (c_out.next_power_of_two().max(16), pixels.next_power_of_two().max(64));
        let (bm, bn) = Self::TILES
            .into_iter()
            .filter(|&(bm, bn)| bm <= rows && bn <= cols)
            .max_by_key(|&(bm, bn)| (bm * bn, bn))
            .unwrap_or((16, 128));
        let tiles = c_out.div_ceil(bm) * pixels.div_ceil(bn);
        let max_splits = (depth.div_ceil(BK) / 8).clamp(1, 16);
        let splits = workgroups.div_ceil(tiles).clamp(1, max_splits);
        Tiling { bm, bn, splits, vectors: false, prefetch: false }
    }

    /// A tile shape the kernel is compiled for, 1 to 64 splits, and `prefetch` only with `vectors`.
    pub fn valid(self) -> bool {
        let tiles: &[(usize, usize)] = if self.vectors { &Self::VECTOR_TILES } else { &Self::TILES };
        tiles.contains(&(self.bm, self.bn)) && (1..=64).contains(&self.splits) && (self.vectors || !self.prefetch)
    }
}

/// Weight (output channel `m`, reduction index `k`) of `[c_out, depth]` weights, or with `weight_kn`
/// of `[depth, c_out]` ones (a linear layer's); 0 past either end (a tile's overhang).
#[cube]
fn weight_value<E: Float>(
    weight: &[E],
    m: usize,
    k: usize,
    c_out: usize,
    depth: usize,
    #[comptime] weight_kn: bool,
) -> E {
    let mut v = E::from_int(0);
    if m < c_out && k < depth {
        if weight_kn {
            v = weight[k * c_out + m];
        } else {
            v = weight[m * depth + k];
        }
    }
    v
}

/// The input value at padded position (`iy`, `ix`) of the `in_h x in_w` plane starting at `plane`;
/// 0 in the padding, and where not `ok` (past the reduction's or the pixels' end).
#[cube]
#[allow(clippy::too_many_arguments)]
fn patch_value<E: Float>(
    input: &[E],
    plane: usize,
    iy: usize,
    ix: usize,
    ok: bool,
    in_h: usize,
    in_w: usize,
    pad_top: usize,
    pad_left: usize,
) -> E {
    let mut v = E::from_int(0);
    if ok && iy >= pad_top && ix >= pad_left {
        let y = iy - pad_top;
        let x = ix - pad_left;
        if y < in_h && x < in_w {
            v = input[plane + y * in_w + x];
        }
    }
    v
}

/// Four values: the vectorized implicit GEMM's unit of workgroup memory and of accumulation.
type Vec4<E> = Vector<E, Const<4>>;

/// Stores the slice an invocation read into registers (`a_r` weights, `b_r` patches) into the
/// vectorized loop's workgroup memory, at `a_at + 16 i` and `b_at + 256 i` (the slots it read them
/// for), then waits for the workgroup.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_slice(
    a_s: &mut Shared<[Vec4<f32>]>,
    b_s: &mut Shared<[Vec4<f32>]>,
    a_r: &Array<Vec4<f32>>,
    b_r: &Array<Vec4<f32>>,
    a_at: usize,
    b_at: usize,
    #[comptime] gm: usize,
    #[comptime] nb: usize,
    #[comptime] bn4: usize,
) {
    #[unroll]
    for i in 0..gm {
        a_s[a_at + i * (SIDE * SIDE / BK)] = a_r[i];
    }
    #[unroll]
    for i in 0..nb {
        b_s[b_at + i * comptime!(SIDE * SIDE / bn4) * bn4] = b_r[i];
    }
    sync_cube();
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv2d_igemm<E: Float>(
    input: &[E],
    weight: &[E],
    bias: &[E],
    residual: &[E],
    output: &mut [E],
    partial: &mut [f32],
    c_in: usize,
    in_h: usize,
    in_w: usize,
    c_out: usize,
    out_h: usize,
    out_w: usize,
    pad_top: usize,
    pad_left: usize,
    m_tiles: usize,
    k_tiles_per_split: usize,
    #[comptime] kh: usize,
    #[comptime] kw: usize,
    #[comptime] stride: usize,
    #[comptime] bm: usize,
    #[comptime] bn: usize,
    #[comptime] split: bool,
    epilogue: u32,
    #[comptime] weight_kn: bool,
    #[comptime] vectors: bool,
    #[comptime] prefetch: bool,
    #[define(E)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let t = ty * SIDE + tx;
    let hw_out = out_h * out_w;
    let batch = input.len() / (c_in * in_h * in_w);
    let pixels = hw_out * batch;
    let depth = c_in * kh * kw;
    let taps = kh * kw;
    let tile_p = (CUBE_POS_X as usize + CUBE_POS_Z as usize * CUBE_COUNT_X as usize) * bn;
    let tile_m = (CUBE_POS_Y as usize % m_tiles) * bm;
    let part = CUBE_POS_Y as usize / m_tiles;
    let k_tiles = (depth + BK - 1) / BK;
    let kt_first = part * k_tiles_per_split;
    let mut kt_end = kt_first + k_tiles_per_split;
    if kt_end > k_tiles {
        kt_end = k_tiles;
    }

    // With `vectors` ([`Tiling::vectors`]) workgroup memory is staged and read as [`Vec4`]s: each
    // invocation owns rows `g * 64 + 4 ty + r` and pixels `h * 64 + 4 tx + c` of the tile (runs of
    // four, so a row of the staged slice is one vector load; the second run 64 further keeps a warp's
    // vector loads on distinct banks), accumulating `bm / 16` rows x `bn / 64` vectors of f32.
    // Otherwise one value at a time: rows `ty + 16 i` and pixels `tx + 16 j`.
    if vectors {
        // Runs of 64 rows (pixels) per tile: the invocation's vectors per slice row of `a_s` (`b_s`).
        let gm = comptime!(bm / 64);
        let gn = comptime!(bn / 64);
        let bm4 = comptime!(bm / 4);
        let bn4 = comptime!(bn / 4);

        // [k][m / 4] and [k][n / 4], in f32 (see the scalar loop's).
        let mut a_s = Shared::<[Vec4<f32>]>::new_slice(BK * bm4);
        let mut b_s = Shared::<[Vec4<f32>]>::new_slice(BK * bn4);
        let mut acc = Array::<Vec4<f32>>::new(gm * 4 * gn);
        #[unroll]
        for i in 0..gm * 4 * gn {
            acc[i] = Vec4::<f32>::broadcast(0.0);
        }

        // The four patch columns this invocation gathers are fixed: pixels `4 (t % (bn / 4)) + c` of the
        // tile, slice rows `t / (bn / 4) + (1024 / bn) i`. A pixel past the end gets a row no tap reaches.
        let load_v = t % bn4;
        let load_kb = t / bn4;
        let mut base = Array::<usize>::new(4usize);
        let mut ys = Array::<usize>::new(4usize);
        let mut xs = Array::<usize>::new(4usize);
        #[unroll]
        for c in 0..4 {
            let p = tile_p + load_v * 4 + c;
            let prem = p % hw_out;
            base[c] = (p / hw_out) * c_in * in_h * in_w;
            ys[c] = (prem / out_w) * stride;
            xs[c] = (prem % out_w) * stride;
            if p >= pixels {
                base[c] = 0;
                ys[c] = in_h + pad_top;
            }
        }
        // The weight vectors it loads: depth `t % BK` of the slice, channels `4 (t / BK + 16 i) + r`
        // (16 invocations read 16 consecutive depths of one channel: one memory segment).
        let a_k = t % BK;
        let a_v = t / BK;

        // The slice's values pass through registers: `a_r` (weights) and `b_r` (patches). With
        // `prefetch` step `s` stores slice `s - 1` (read by step `s - 1`), then reads slice `s` while
        // the workgroup multiplies slice `s - 1`: one step more than there are slices.
        let nb = comptime!(BK * bn4 / (SIDE * SIDE));
        let mut a_r = Array::<Vec4<f32>>::new(gm);
        let mut b_r = Array::<Vec4<f32>>::new(nb);
        // Where this invocation's first weight and patch vectors go in workgroup memory.
        let a_at = a_k * bm4 + a_v;
        let b_at = load_kb * bn4 + load_v;
        // None for a split past the reduction's end (more splits than slices): its sums stay 0.
        let mut slices = 0usize;
        if kt_end > kt_first {
            slices = kt_end - kt_first;
        }
        let mut steps = slices;
        if prefetch {
            steps += 1;
        }
        for s in 0..steps {
            // Whether slice `s - 1` (with `prefetch`) or `s` waits in the registers for the workgroup.
            let mut ready = s < slices;
            if prefetch {
                ready = s >= 1;
            }
            if prefetch {
                if ready {
                    stage_slice(&mut a_s, &mut b_s, &a_r, &b_r, a_at, b_at, gm, nb, bn4);
                }
            }
            if s < slices {
                let k0 = (kt_first + s) * BK;
                #[unroll]
                for i in 0..gm {
                    let v = a_v + i * (SIDE * SIDE / BK);
                    let k = k0 + a_k;
                    let mut w = Vec4::<E>::empty();
                    #[unroll]
                    for r in 0..4 {
                        w.insert(r, weight_value(weight, tile_m + v * 4 + r, k, c_out, depth, weight_kn));
                    }
                    a_r[i] = Vec4::<f32>::cast_from(w);
                }
                #[unroll]
                for i in 0..nb {
                    let kl = load_kb + i * comptime!(SIDE * SIDE / bn4);
                    let k = k0 + kl;
                    let ci = k / taps;
                    let r = k % taps;
                    let dy = r / kw;
                    let dx = r % kw;
                    let mut vals = Vec4::<E>::empty();
                    #[unroll]
                    for c in 0..4 {
                        let iy = ys[c] + dy;
                        let ix = xs[c] + dx;
                        let plane = base[c] + ci * in_h * in_w;
                        vals.insert(c, patch_value(input, plane, iy, ix, k < depth, in_h, in_w, pad_top, pad_left));
                    }
                    b_r[i] = Vec4::<f32>::cast_from(vals);
                }
            }
            if !prefetch {
                stage_slice(&mut a_s, &mut b_s, &a_r, &b_r, a_at, b_at, gm, nb, bn4);
            }
            if ready {
                for kk in 0..BK {
                    let mut b = Array::<Vec4<f32>>::new(gn);
                    #[unroll]
                    for h in 0..gn {
                        b[h] = b_s[kk * bn4 + h * SIDE + tx];
                    }
                    #[unroll]
                    for g in 0..gm {
                        let a = a_s[kk * bm4 + g * SIDE + ty];
                        #[unroll]
                        for r in 0..4 {
                            let ar = Vec4::<f32>::broadcast(a.extract(r));
                            #[unroll]
                            for h in 0..gn {
                                acc[(g * 4 + r) * gn + h] += ar * b[h];
                            }
                        }
                    }
                }
                sync_cube();
            }
        }

        #[unroll]
        for h in 0..gn {
            #[unroll]
            for c in 0..4 {
                let p = tile_p + h * 64 + tx * 4 + c;
                if p < pixels {
                    let pb = p / hw_out;
                    let prem = p % hw_out;
                    #[unroll]
                    for g in 0..gm {
                        #[unroll]
                        for r in 0..4 {
                            let m = tile_m + g * 64 + ty * 4 + r;
                            if m < c_out {
                                let at = (pb * c_out + m) * hw_out + prem;
                                let v = acc[(g * 4 + r) * gn + h].extract(c);
                                if split {
                                    partial[part * batch * c_out * hw_out + at] = v;
                                } else {
                                    output[at] = with_epilogue(v, bias, residual, at, pb, m, c_out, epilogue);
                                }
                            }
                        }
                    }
                }
            }
        }
    } else {
        let tm = comptime!(bm / SIDE);
        let tn = comptime!(bn / SIDE);

        // [k][m] and [k][n]: the inner loop reads a row of each. In f32 whatever `E` is: an f16 value
        // is converted once as it is staged rather than by each of the 16 invocations that read it (in
        // the inner loop a conversion per value read cost one instruction per two to four multiply-adds).
        let mut a_s = Shared::<[f32]>::new_slice(BK * bm);
        let mut b_s = Shared::<[f32]>::new_slice(BK * bn);
        let mut acc = Array::<f32>::new(tm * tn);
        #[unroll]
        for i in 0..tm * tn {
            acc[i] = 0.0;
        }

        // The patch column this invocation gathers is fixed: pixel `t % bn` of the tile, rows
        // `t / bn + (256 / bn) i` of each slice.
        let load_n = t % bn;
        let p = tile_p + load_n;
        let p_ok = p < pixels;
        let pb = p / hw_out;
        let prem = p % hw_out;
        let y0 = (prem / out_w) * stride;
        let x0 = (prem % out_w) * stride;
        let in_base = pb * c_in * in_h * in_w;
        let load_kb = t / bn;
        // The weight values it loads: depth `t % BK` of the slice, channels `t / BK + 16 i`.
        let a_k = t % BK;
        let a_m = t / BK;

        for kt in kt_first..kt_end {
            let k0 = kt * BK;
            #[unroll]
            for i in 0..bm * BK / (SIDE * SIDE) {
                let m = tile_m + a_m + i * (SIDE * SIDE / BK);
                a_s[a_k * bm + a_m + i * (SIDE * SIDE / BK)] =
                    f32::cast_from(weight_value(weight, m, k0 + a_k, c_out, depth, weight_kn));
            }
            #[unroll]
            for i in 0..bn * BK / (SIDE * SIDE) {
                let kl = load_kb + i * (SIDE * SIDE / bn);
                let k = k0 + kl;
                let ci = k / taps;
                let r = k % taps;
                let iy = y0 + r / kw;
                let ix = x0 + r % kw;
                let plane = in_base + ci * in_h * in_w;
                b_s[kl * bn + load_n] =
                    f32::cast_from(patch_value(input, plane, iy, ix, p_ok && k < depth, in_h, in_w, pad_top, pad_left));
            }
            sync_cube();

            for kk in 0..BK {
                let mut a = Array::<f32>::new(tm);
                let mut b = Array::<f32>::new(tn);
                #[unroll]
                for i in 0..tm {
                    a[i] = a_s[kk * bm + ty + i * SIDE];
                }
                #[unroll]
                for j in 0..tn {
                    b[j] = b_s[kk * bn + tx + j * SIDE];
                }
                #[unroll]
                for i in 0..tm {
                    #[unroll]
                    for j in 0..tn {
                        acc[i * tn + j] += a[i] * b[j];
                    }
                }
            }
            sync_cube();
        }

        #[unroll]
        for j in 0..tn {
            let p = tile_p + tx + j * SIDE;
            if p < pixels {
                let pb = p / hw_out;
                let prem = p % hw_out;
                #[unroll]
                for i in 0..tm {
                    let m = tile_m + ty + i * SIDE;
                    if m < c_out {
                        let at = (pb * c_out + m) * hw_out + prem;
                        let v = acc[i * tn + j];
                        if split {
                            partial[part * batch * c_out * hw_out + at] = v;
                        } else {
                            output[at] = with_epilogue(v, bias, residual, at, pb, m, c_out, epilogue);
                        }
                    }
                }
            }
        }
    }
}

/// What a convolution's (or linear layer's) last step adds to an output value: a bias per output
/// channel or per (batch, output channel) (a ResNet block's projected time embedding folded in),
/// and a residual of the output's shape (the block's shortcut), in f32 before the one rounding to
/// the output's type. Saves a pass over the output per add, and a launch. The kernel takes it as a
/// runtime value ([`Epilogue::flags`]), so each shape compiles one shader whatever it adds (a cold
/// first step on SwiftShader took twice as long with one shader per epilogue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Epilogue {
    pub bias: bool,
    /// The bias is `[batch, c_out]` rather than `[c_out]`.
    pub bias_per_batch: bool,
    pub residual: bool,
}

/// [`Epilogue::flags`]' bits, read by the kernels.
const BIAS: u32 = 1;
const PER_BATCH: u32 = 2;
const RESIDUAL: u32 = 4;

impl Epilogue {
    /// The kernels' `epilogue` argument.
    pub fn flags(self) -> u32 {
        let bit = |on: bool, flag: u32| if on { flag } else { 0 };
        bit(self.bias, BIAS) | bit(self.bias_per_batch, PER_BATCH) | bit(self.residual, RESIDUAL)
    }
}

/// The bias `epilogue` ([`Epilogue::flags`]) adds to output channel `channel` of `c_out` of batch
/// `batch`. Without branches, as it is unrolled over a lane's channels: without a bias it reads the
/// stand-in binding (finite weights, in bounds) and multiplies by 0, adding exactly nothing.
#[cube]
pub(crate) fn bias_of<E: Float>(bias: &[E], batch: usize, channel: usize, c_out: usize, epilogue: u32) -> f32 {
    let on = (epilogue & BIAS) / BIAS;
    let per_batch = ((epilogue & PER_BATCH) / PER_BATCH) as usize;
    f32::cast_from(bias[(channel + per_batch * batch * c_out) * on as usize]) * f32::cast_from(on)
}

/// `values` where `epilogue` has a residual, else 0: the trip count of the lane kernels' residual loop.
#[cube]
pub(crate) fn residual_count(epilogue: u32, values: usize) -> usize {
    ((epilogue & RESIDUAL) / RESIDUAL) as usize * values
}

/// `value` plus the residual at `at` where `epilogue` has one (without branches, as [`bias_of`]:
/// otherwise it reads the stand-in's first value and adds 0 times it).
#[cube]
pub(crate) fn plus_residual<E: Float>(value: f32, residual: &[E], at: usize, epilogue: u32) -> f32 {
    let on = (epilogue & RESIDUAL) / RESIDUAL;
    value + f32::cast_from(residual[at * on as usize]) * f32::cast_from(on)
}

/// A convolution's output value at `at` of `[batch, c_out, h, w]` (batch `batch`, channel `channel`):
/// its f32 sum through the epilogue ([`bias_of`], [`plus_residual`]), rounded once to `E`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn with_epilogue<E: Float>(
    sum: f32,
    bias: &[E],
    residual: &[E],
    at: usize,
    batch: usize,
    channel: usize,
    c_out: usize,
    epilogue: u32,
) -> E {
    E::cast_from(plus_residual(sum + bias_of(bias, batch, channel, c_out, epilogue), residual, at, epilogue))
}

/// The split-K pass: each output value is the sum of its `splits` partial sums plus the epilogue.
#[cube(launch_unchecked)]
fn conv2d_sum_splits<E: Float>(
    partial: &[f32],
    bias: &[E],
    residual: &[E],
    output: &mut [E],
    c_out: usize,
    hw_out: usize,
    #[comptime] splits: usize,
    epilogue: u32,
    #[define(E)] _dtype: ElemType,
) {
    let at =
        (CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize) * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    let len = output.len();
    if at < len {
        let mut v = 0.0f32;
        #[unroll]
        for s in 0..splits {
            v += partial[s * len + at];
        }
        let batch_channel = at / hw_out;
        let (batch, channel) = (batch_channel / c_out, batch_channel % c_out);
        output[at] = with_epilogue(v, bias, residual, at, batch, channel, c_out, epilogue);
    }
}

/// The output size along one axis: `None` when the padded input is smaller than the kernel.
pub fn output_size(input: usize, kernel: usize, stride: usize, before: usize, after: usize) -> Option<usize> {
    Some((input + before + after).checked_sub(kernel)? / stride + 1)
}

/// `conv2d(x, weight, bias)` with groups 1 and dilation 1, as burn's with the same stride and padding:
/// the implicit GEMM tiled as [`super::conv_tiling`] picks for this device and shape, or on CPU
/// devices ([`super::Choice::lanes`]) `conv2d_lanes` in [`Block::for_shape`]'s blocks; `None`
/// when `x` is not on a cubecl device, is not f32/f16, or the padded input is smaller than the kernel
/// (the caller then uses burn's op).
///
/// `padding` is (top, left, bottom, right), burn's `PaddingConfig2d::Explicit` order.
///
/// # Shapes
/// - x: `[batch, c_in, h, w]`
/// - weight: `[c_out, c_in, kh, kw]`
/// - bias: `[c_out]`
/// - output: `[batch, c_out, (h + top + bottom - kh) / stride + 1, (w + left + right - kw) / stride + 1]`
pub fn conv2d(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: usize,
    padding: [usize; 4],
    add: Add,
) -> Option<Tensor<4>> {
    let [b, _, h, w] = x.dims();
    let [c_out, c_in, kh, kw] = weight.dims();
    let [top, left, bottom, right] = padding;
    let (out_h, out_w) = (output_size(h, kh, stride, top, bottom)?, output_size(w, kw, stride, left, right)?);
    let choice = super::choice();
    if choice.lanes {
        let block = Block::for_shape(c_out, b, out_h, out_w, choice.lane_accumulators);
        return conv2d_blocked(x, weight, bias, stride, padding, block, add);
    }
    let pixels = b * out_h * out_w;
    conv2d_tiled(x, weight, bias, stride, padding, super::conv_tiling(c_out, pixels, c_in * kh * kw), add)
}

/// What a convolution adds to its output besides its bias, in the same pass ([`Epilogue`]).
///
/// # Shapes
/// - per_batch: `[batch, c_out]`, added to every pixel of its (batch, channel) plane
/// - residual: the output's shape
#[derive(Clone, Copy, Debug, Default)]
pub struct Add<'a> {
    pub per_batch: Option<&'a Tensor<2>>,
    pub residual: Option<&'a Tensor<4>>,
}

impl Add<'_> {
    pub const NONE: Add<'static> = Add { per_batch: None, residual: None };
}

/// A launch's epilogue operands: the bias (per channel, or with a per-batch term added in, per
/// (batch, channel)), the residual, and which of them the kernel reads.
pub(crate) struct Tail {
    pub bias: Option<CubeTensor>,
    pub residual: Option<CubeTensor>,
    pub epilogue: Epilogue,
}

impl Tail {
    /// `None` where a tensor is not a cubecl tensor of `dtype` or `add` does not fit
    /// `[batch, c_out, ...]` / the output's `out` shape.
    pub(crate) fn new(bias: Option<&Tensor<1>>, add: Add, dtype: DType, out: [usize; 4]) -> Option<Tail> {
        let [batch, c_out, _, _] = out;
        let bias_per_batch = add.per_batch.is_some();
        let bias = match (bias, add.per_batch) {
            (_, Some(t)) if t.dims() != [batch, c_out] => return None,
            (Some(b), Some(t)) => Some(t.clone() + b.clone().unsqueeze_dim(0)),
            (None, Some(t)) => Some(t.clone()),
            (b, None) => b.map(|b| b.clone().unsqueeze_dim(0)),
        };
        let bias = match bias {
            Some(b) => Some(super::cube_tensor(&b, dtype)?),
            None => None,
        };
        let residual = match add.residual {
            Some(r) if r.dims() != out => return None,
            Some(r) => Some(super::cube_tensor(r, dtype)?),
            None => None,
        };
        let epilogue = Epilogue { bias: bias.is_some(), bias_per_batch, residual: residual.is_some() };
        Some(Tail { bias, residual, epilogue })
    }

    /// The bias and residual bindings, `stand_in` (a read-only operand) for those the kernel does not
    /// read (a binding needs a buffer), and the kernel's `epilogue` argument.
    pub(crate) fn bindings(self, stand_in: &CubeTensor) -> (CubeTensor, CubeTensor, u32) {
        let bias = self.bias.unwrap_or_else(|| stand_in.clone());
        (bias, self.residual.unwrap_or_else(|| stand_in.clone()), self.epilogue.flags())
    }
}

/// burn's direct convolution kernel, asked for by name: where our kernels run, the convolutions below
/// their thresholds use it. burn's default there (autotune off, as in the browser) runs a 1x1
/// convolution as a matmul compiled for each shape, 2-8 thousand lines of WGSL each, which SwiftShader
/// compiles for up to a second apiece in a cold first step; the direct kernel is a few hundred lines.
/// `None` where the tensors are not f32/f16 cubecl tensors or burn refuses the shape.
///
/// # Shapes
/// - x: `[batch, c_in, h, w]`, weight: `[c_out, c_in, kh, kw]`, bias: `[c_out]`
/// - output: `[batch, c_out, h_out, w_out]`
pub fn burn_direct(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    options: burn::tensor::ops::ConvOptions<2>,
) -> Option<Tensor<4>> {
    use burn_cubecl::kernel::conv::{ConvStrategy, conv_forward};
    let dtype = x.dtype();
    let input = super::cube_tensor(x, dtype)?;
    let weight = super::cube_tensor(weight, dtype)?;
    let bias = super::cube_bias(bias, dtype)?;
    let out = conv_forward::<2>(input, weight, bias, options, ConvStrategy::Direct).ok()?;
    Some(Tensor::from_primitive::<CubeBackend>(out))
}

/// [`conv2d`] with a given tiling (benchmarks and tests try each); panics on a tile shape the kernel
/// is not compiled for ([`Tiling::TILES`]).
pub fn conv2d_tiled(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: usize,
    padding: [usize; 4],
    tiling: Tiling,
    add: Add,
) -> Option<Tensor<4>> {
    assert!(tiling.valid(), "no such tiling: {tiling:?}");
    let (out, tail) = operands(x, weight, bias, stride, padding, add)?;
    let dtype = x.dtype();
    let (input, weight) = (super::cube_tensor(x, dtype)?, super::cube_tensor(weight, dtype)?);
    let [top, left, ..] = padding;
    Some(Tensor::from_primitive::<CubeBackend>(launch(input, weight, tail, stride, [top, left], out, tiling, false)))
}

/// The output's `[out_h, out_w]` and the epilogue's operands; `None` where the padded input is
/// smaller than the kernel or [`Tail::new`] declines.
fn operands(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: usize,
    [top, left, bottom, right]: [usize; 4],
    add: Add,
) -> Option<([usize; 2], Tail)> {
    let [batch, _, h, w] = x.dims();
    let [c_out, _, kh, kw] = weight.dims();
    let out = [output_size(h, kh, stride, top, bottom)?, output_size(w, kw, stride, left, right)?];
    let tail = Tail::new(bias, add, x.dtype(), [batch, c_out, out[0], out[1]])?;
    Some((out, tail))
}

/// Launches the kernel on `[batch, c_in, in_h, in_w]` input and `[c_out, c_in, kh, kw]` weights, or with
/// `weight_kn` `[c_in, c_out, kh, kw]` ones (a linear layer's `[d_in, d_out]` matrix: a linear layer is a
/// 1x1 convolution of 1x1 images, one per row); the output is `[batch, c_out, out_h, out_w]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch(
    input: CubeTensor,
    weight: CubeTensor,
    tail: Tail,
    stride: usize,
    [top, left]: [usize; 2],
    [out_h, out_w]: [usize; 2],
    tiling: Tiling,
    weight_kn: bool,
) -> CubeTensor {
    let dims = |t: &CubeTensor| t.meta.shape().to_vec();
    let (&[batch, c_in, in_h, in_w], &[w0, w1, kh, kw]) = (&dims(&input)[..], &dims(&weight)[..]) else {
        unreachable!("rank-4 tensors")
    };
    let c_out = if weight_kn { w1 } else { w0 };
    let client = input.client.clone();
    let device = input.device.clone();
    let dtype = input.dtype;
    let storage = burn::backend::cubecl::dtype_to_storage_type(dtype);
    let output = empty_device_dtype(client.clone(), device.clone(), [batch, c_out, out_h, out_w].into(), dtype);
    // More splits than slices would leave workgroups with nothing to add; the partial sums stay within
    // one buffer's limit.
    let k_tiles = (c_in * kh * kw).div_ceil(BK);
    let out_bytes = 4 * batch * c_out * out_h * out_w;
    let fit = (super::max_buffer_bytes() / out_bytes.max(1)).max(1);
    let per_split = k_tiles.div_ceil(tiling.splits.min(k_tiles).min(fit));
    let splits = k_tiles.div_ceil(per_split);
    let split = splits > 1;
    let partial = if split {
        empty_device_dtype(client.clone(), device, [splits, batch, c_out, out_h, out_w].into(), DType::F32)
    } else {
        // Never written: a binding needs a buffer.
        empty_device_dtype(client.clone(), device, [1].into(), DType::F32)
    };

    let (bias, residual, epilogue) = tail.bindings(&weight);
    let pixel_tiles = (batch * out_h * out_w).div_ceil(tiling.bn);
    let groups_x = pixel_tiles.min(MAX_GROUPS);
    let groups_z = pixel_tiles.div_ceil(groups_x);
    let m_tiles = c_out.div_ceil(tiling.bm);
    let count = CubeCount::Static(groups_x as u32, (m_tiles * splits) as u32, groups_z as u32);
    unsafe {
        conv2d_igemm::launch_unchecked(
            &client,
            count,
            CubeDim::new_2d(SIDE as u32, SIDE as u32),
            input.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.clone().into_buffer_arg(),
            residual.clone().into_buffer_arg(),
            output.clone().into_buffer_arg(),
            partial.clone().into_buffer_arg(),
            c_in,
            in_h,
            in_w,
            c_out,
            out_h,
            out_w,
            top,
            left,
            m_tiles,
            per_split,
            kh,
            kw,
            stride,
            tiling.bm,
            tiling.bn,
            split,
            epilogue,
            weight_kn,
            tiling.vectors,
            tiling.prefetch,
            storage,
        );
    }
    if split {
        const LANES: usize = 256;
        let count = super::grid_1d(batch * c_out * out_h * out_w, LANES);
        unsafe {
            conv2d_sum_splits::launch_unchecked(
                &client,
                count,
                CubeDim::new_1d(LANES as u32),
                partial.into_buffer_arg(),
                bias.into_buffer_arg(),
                residual.into_buffer_arg(),
                output.clone().into_buffer_arg(),
                c_out,
                out_h * out_w,
                splits,
                epilogue,
                storage,
            );
        }
    }
    output
}

/// One lane's share of the output in `conv2d_lanes`: `ch` output channels x `rows` x `cols` pixels,
/// in workgroups of `lanes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Block {
    pub ch: usize,
    pub rows: usize,
    pub cols: usize,
    pub lanes: usize,
}

impl Block {
    /// A block a device may be given (a stored pick is checked against it): every side at least 1, at
    /// most [`Block::MAX_ACCUMULATORS`] and 256 lanes. (`op_bench` still times larger ones.)
    pub fn valid(self) -> bool {
        let sides = [self.ch, self.rows, self.cols, self.lanes];
        sides.iter().all(|&n| n >= 1) && self.ch * self.rows * self.cols <= Self::MAX_ACCUMULATORS && self.lanes <= 256
    }

    /// The accumulators per lane of a device nobody measured (a GPU, whose kernels [`super::tune`]
    /// measures: the lane kernels are candidates for every convolution and linear layer there). 256
    /// would not fit a GPU's registers per invocation (NVIDIA's 255, fewer on Apple's and many
    /// integrated GPUs) beside the lane's input window, so they would spill; and a lane convolution
    /// of 64 compiled in 0.16-0.20 s natively against 256's 1.31-1.53 s (lavapipe, 3x3, stride 1 and
    /// 2; BENCHMARKS.md "Lane blocks where nobody measured").
    pub const UNMEASURED_ACCUMULATORS: usize = 64;

    /// Accumulators per lane, at most: the most any device is given. Compiling the kernel grows much
    /// faster than its block (cubecl's optimizer, then LLVM on llvmpipe): 8 x 4x8 pixels took 1.2 s
    /// to compile and run once natively on lavapipe, 16 x 8x8 24 s.
    pub const MAX_ACCUMULATORS: usize = Self::LLVMPIPE_ACCUMULATORS;

    /// Lanes per workgroup: one vector of llvmpipe's 256-bit registers (more gave nothing at large
    /// sizes and left lanes idle at small ones: BENCHMARKS.md).
    pub const LANES: usize = 8;

    /// The accumulators per lane llvmpipe is given ([`super::Choice::lane_accumulators`]): LLVM's
    /// compile time grows faster than the block (the tiny U-Net's first call there: 11-14 s with 256,
    /// 23 s with 512, 35 s with 1024), while 1024 ran only ~1.4x faster than 256 once compiled.
    pub const LLVMPIPE_ACCUMULATORS: usize = 256;

    /// The largest pixel block with at least 4 channels in `accumulators` that still leaves a block
    /// for every lane of a workgroup (so that few pixels, 1280 channels at 4x4, do not leave most of
    /// a vector idle), and as many channels as `accumulators` allow (at most 32), never more than
    /// `c_out` needs. `op_bench 32 wgpu - - blocks` on llvmpipe (BENCHMARKS.md): 8 channels x 4x8
    /// pixels 26-27 GFLOP/s at SD's 3x3 shapes at 32x32 and 16x16, 16 x 4x4 24 at 8x8, 32 x 1x4 9 at
    /// 4x4 (burn's autotuned kernels 7.3-7.5).
    pub fn for_shape(c_out: usize, batch: usize, out_h: usize, out_w: usize, accumulators: usize) -> Block {
        let (rows, cols) = [(4, 8), (4, 4), (2, 4), (1, 4), (1, 2)]
            .into_iter()
            .find(|&(r, c)| {
                4 * r * c <= accumulators
                    && r <= out_h
                    && c <= out_w
                    && batch * out_h.div_ceil(r) * out_w.div_ceil(c) >= Self::LANES
            })
            .unwrap_or((1, 1));
        let ch = (accumulators / (rows * cols)).clamp(1, 32);
        Block { ch: ch.min(c_out.next_power_of_two().max(4)), rows, cols, lanes: Self::LANES }
    }
}

/// The convolution for devices whose invocations are SIMD lanes of a CPU (llvmpipe): there every
/// load from a buffer or from workgroup memory whose address is not a constant runs lane by lane, and
/// a workgroup's lane groups switch at every barrier, so what counts is arithmetic per loaded value.
/// No workgroup memory and no barriers: each lane keeps a block of `ch` output channels x `ry` rows x
/// `px` pixels in registers, loads the input rows and columns the block reads once per input channel
/// (for all `kh` x `kw` taps), and each weight once for all its pixels.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv2d_lanes<E: Float>(
    input: &[E],
    weight: &[E],
    bias: &[E],
    residual: &[E],
    output: &mut [E],
    c_in: usize,
    in_h: usize,
    in_w: usize,
    c_out: usize,
    out_h: usize,
    out_w: usize,
    pad_top: usize,
    pad_left: usize,
    #[comptime] kh: usize,
    #[comptime] kw: usize,
    #[comptime] stride: usize,
    #[comptime] ch: usize,
    #[comptime] ry: usize,
    #[comptime] px: usize,
    epilogue: u32,
    #[define(E)] _dtype: ElemType,
) {
    let span = comptime!((px - 1) * stride + kw);
    let span_y = comptime!((ry - 1) * stride + kh);
    let hw_out = out_h * out_w;
    let plane = in_h * in_w;
    let batch = input.len() / (c_in * plane);
    let row_tiles = (out_w + px - 1) / px;
    let col_tiles = (out_h + ry - 1) / ry;
    let lanes = batch * col_tiles * row_tiles;
    let lane =
        (CUBE_POS_X as usize + CUBE_POS_Z as usize * CUBE_COUNT_X as usize) * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    let m0 = CUBE_POS_Y as usize * ch;
    let lane_ok = lane < lanes;
    let pb = lane / (col_tiles * row_tiles);
    let oy0 = ((lane / row_tiles) % col_tiles) * ry;
    let ox0 = (lane % row_tiles) * px;
    let y0 = oy0 * stride;
    let x0 = ox0 * stride;
    let in_base = pb * c_in * plane;
    let depth = c_in * kh * kw;

    let mut acc = Array::<f32>::new(ch * ry * px);
    #[unroll]
    for i in 0..ch * ry * px {
        acc[i] = 0.0;
    }
    // Each weight row's start, clamped to the last channel (the extra rows are computed, never written).
    let mut rows = Array::<usize>::new(ch);
    #[unroll]
    for m in 0..ch {
        let mut c = m0 + m;
        if c >= c_out {
            c = c_out - 1;
        }
        rows[m] = c * depth;
    }
    // The input rows and columns the lane's block reads for one input channel, loaded once.
    let mut seg = Array::<f32>::new(span_y * span);
    for ci in 0..c_in {
        let src = in_base + ci * plane;
        #[unroll]
        for r in 0..span_y {
            let iy = y0 + r;
            let row_ok = lane_ok && iy >= pad_top && iy < in_h + pad_top;
            let row = src + (iy - pad_top) * in_w;
            #[unroll]
            for s in 0..span {
                let ix = x0 + s;
                let mut v = 0.0f32;
                if row_ok && ix >= pad_left && ix < in_w + pad_left {
                    v = f32::cast_from(input[row + ix - pad_left]);
                }
                seg[r * span + s] = v;
            }
        }
        #[unroll]
        for ky in 0..kh {
            #[unroll]
            for kx in 0..kw {
                let k = (ci * kh + ky) * kw + kx;
                #[unroll]
                for m in 0..ch {
                    let w = f32::cast_from(weight[rows[m] + k]);
                    #[unroll]
                    for i in 0..ry {
                        #[unroll]
                        for j in 0..px {
                            acc[(m * ry + i) * px + j] += w * seg[(i * stride + ky) * span + j * stride + kx];
                        }
                    }
                }
            }
        }
    }
    if lane_ok {
        #[unroll]
        for m in 0..ch {
            let c = m0 + m;
            if c < c_out {
                let b = bias_of(bias, pb, c, c_out, epilogue);
                #[unroll]
                for i in 0..ry {
                    let oy = oy0 + i;
                    let base = (pb * c_out + c) * hw_out + oy * out_w;
                    #[unroll]
                    for j in 0..px {
                        if oy < out_h && ox0 + j < out_w {
                            output[base + ox0 + j] = E::cast_from(acc[(m * ry + i) * px + j] + b);
                        }
                    }
                }
            }
        }
        // The residual in a loop that is not unrolled (none without one): inlined per accumulator
        // it grew every lane shader, and Chromium's first U-Net call of the SD-shaped model took 0.6 s
        // longer to compile. The values just written are still in this core's cache.
        let count = residual_count(epilogue, ch * ry * px);
        for e in 0..count {
            let c = m0 + e / (ry * px);
            let oy = oy0 + (e / px) % ry;
            let ox = ox0 + e % px;
            if c < c_out && oy < out_h && ox < out_w {
                let at = (pb * c_out + c) * hw_out + oy * out_w + ox;
                output[at] = E::cast_from(f32::cast_from(output[at]) + f32::cast_from(residual[at]));
            }
        }
    }
}

/// [`conv2d_lanes`] on `[batch, c_in, in_h, in_w]` input and `[c_out, c_in, kh, kw]` weights.
pub(crate) fn launch_lanes(
    input: CubeTensor,
    weight: CubeTensor,
    tail: Tail,
    stride: usize,
    [top, left]: [usize; 2],
    [out_h, out_w]: [usize; 2],
    Block { ch, rows: ry, cols: px, lanes }: Block,
) -> CubeTensor {
    let dims = |t: &CubeTensor| t.meta.shape().to_vec();
    let (&[batch, c_in, in_h, in_w], &[c_out, _, kh, kw]) = (&dims(&input)[..], &dims(&weight)[..]) else {
        unreachable!("rank-4 tensors")
    };
    let client = input.client.clone();
    let dtype = input.dtype;
    let storage = burn::backend::cubecl::dtype_to_storage_type(dtype);
    let output = empty_device_dtype(client.clone(), input.device.clone(), [batch, c_out, out_h, out_w].into(), dtype);
    let (bias, residual, epilogue) = tail.bindings(&weight);
    let lane_groups = (batch * out_h.div_ceil(ry) * out_w.div_ceil(px)).div_ceil(lanes);
    let groups_x = lane_groups.min(MAX_GROUPS);
    let count = CubeCount::Static(groups_x as u32, c_out.div_ceil(ch) as u32, lane_groups.div_ceil(groups_x) as u32);
    unsafe {
        conv2d_lanes::launch_unchecked(
            &client,
            count,
            CubeDim::new_1d(lanes as u32),
            input.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            residual.into_buffer_arg(),
            output.clone().into_buffer_arg(),
            c_in,
            in_h,
            in_w,
            c_out,
            out_h,
            out_w,
            top,
            left,
            kh,
            kw,
            stride,
            ch,
            ry,
            px,
            epilogue,
            storage,
        );
    }
    output
}

/// [`conv2d`] by `conv2d_lanes` with a given block (benchmarks and tests try several).
pub fn conv2d_blocked(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: usize,
    padding: [usize; 4],
    block: Block,
    add: Add,
) -> Option<Tensor<4>> {
    let (out, tail) = operands(x, weight, bias, stride, padding, add)?;
    let dtype = x.dtype();
    let (input, weight) = (super::cube_tensor(x, dtype)?, super::cube_tensor(weight, dtype)?);
    let [top, left, ..] = padding;
    Some(Tensor::from_primitive::<CubeBackend>(launch_lanes(input, weight, tail, stride, [top, left], out, block)))
}
