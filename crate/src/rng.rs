//! Bit-exact reproduction of PyTorch's CPU random generator and of `torch.randn` on it in `f32`.
//!
//! diffusers draws every noise tensor with `torch.randn(shape, generator=g, dtype=torch.float32)`
//! on `g = torch.Generator("cpu").manual_seed(seed)`; reproducing those bits is what makes a seed
//! here give the same latents as the Python reference. Only integer and IEEE-754 arithmetic is used
//! (`+ - * /`, `sqrt`, fused multiply-add: all correctly rounded by definition) together with our
//! own polynomial math functions, so the output is the same on every platform, wasm32 included; no
//! platform `libm` (whose `sin`/`log` differ in the last bit between systems) is involved.
//!
//! What torch does (ATen `CPUGeneratorImpl`, `MT19937RNGEngine.h`, `DistributionsHelper.h`,
//! `native/cpu/DistributionTemplates.h`):
//! - the engine is the standard 32-bit mt19937 seeded with the low 32 bits of the seed;
//! - a `float` tensor with at least 16 elements (every latent) is filled by `normal_fill_AVX2`:
//!   one 24-bit uniform per element, then Box-Muller on blocks of 16 (`u1` from element `j`, `u2`
//!   from element `j + 8`) with the Cephes-style `log256_ps`/`sincos256_ps` of `avx_mathfun.h`,
//!   compiled by GCC with FMA contraction; if the size is not a multiple of 16, the last 16
//!   elements are redrawn and transformed again;
//! - a smaller tensor takes one `at::normal_distribution<double>` sample per element (53-bit
//!   uniforms, Box-Muller in `f64` with `log1p`/`sin`/`cos`), rounded to `f32`; the second value of
//!   each pair is cached in the generator and consumed by the next small draw.
//!
//! The AVX2 kernel is the one that x86-64 CPUs with AVX2 run and the one that produced the
//! reference tensors. A torch build or CPU that dispatches elsewhere (ARM, or an AVX-512 kernel
//! without this vector code) runs the scalar `normal_fill` with the system `logf`/`sinf`/`cosf`,
//! whose results differ from these in the last bits.

use core::f64::consts::PI;

/// mt19937 state size (words).
const N: usize = 624;
/// mt19937 shift size.
const M: usize = 397;

/// Reproduces torch.Generator("cpu") (mt19937) and torch.randn on it.
///
/// The state carries across calls exactly as in torch: several `randn` calls in a row on one
/// `TorchRng` give the tensors that successive `torch.randn(..., generator=g)` calls give.
#[derive(Clone, Debug)]
pub struct TorchRng {
    /// mt19937 state words.
    state: [u32; N],
    /// Index of the next state word to temper; `N` means the state must be regenerated first.
    next: usize,
    /// torch's `next_double_normal_sample_`: the sine half of the last `f64` Box-Muller pair, kept
    /// for the next small (< 16 elements) draw. Large draws neither use nor clear it, as in torch.
    next_normal: Option<f64>,
}

impl TorchRng {
    /// `torch.Generator("cpu").manual_seed(seed)`: mt19937 seeded with the low 32 bits of `seed`
    /// (torch keeps the full 64-bit seed only for reporting it back) and no cached normal sample.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        // Truncation is torch's own `seed & 0xffffffff`.
        state[0] = seed as u32;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Self { state, next: N, next_normal: None }
    }

    /// One mt19937 output: torch's `CPUGeneratorImpl::random()`.
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `torch.randn(numel, generator=g, dtype=torch.float32)` for a contiguous tensor of `numel`
    /// elements (the shape does not matter, only the element count).
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        if numel >= 16 {
            self.normal_fill(numel)
        } else {
            // Small tensors: one f64 sample per element, rounded to f32 (torch's `static_cast`).
            (0..numel).map(|_| self.normal_f64() as f32).collect()
        }
    }

    /// Regenerates all `N` state words (the standard mt19937 recurrence).
    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut v = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.next = 0;
    }

    /// torch's `random64()`: the first 32-bit output is the high half.
    fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        let lo = u64::from(self.next_u32());
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one output times 2^-24 (exact).
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of `random64()` times 2^-53
    /// (exact).
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>(0, 1)`: Box-Muller on two 53-bit uniforms; the cosine half
    /// is returned and the sine half cached for the next call.
    fn normal_f64(&mut self) -> f64 {
        // `transformation::normal(x, 0, 1)` is `x * 1 + 0`, which only turns -0 into +0.
        if let Some(cached) = self.next_normal.take() {
            return cached + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * log1p(-u2)).sqrt();
        let theta = 2.0 * PI * u1;
        let (sin, cos) = sin_cos_f64(theta);
        self.next_normal = Some(r * sin);
        r * cos + 0.0
    }

    /// torch's `normal_fill_AVX2` with mean 0 and std 1.
    fn normal_fill(&mut self, numel: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16(block);
        }
        if !numel.is_multiple_of(16) {
            // torch redraws the last 16 values (overlapping the last full block) and transforms
            // them again.
            let tail = &mut data[numel - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }
}

// ---- f32 Box-Muller of `normal_fill_16_AVX2`, one lane at a time -------------------------------
//
// The constants are `avx_mathfun.h`'s decimal literals rounded to f32 (as C does), written as bit
// patterns so that no literal parsing can change them. Every `mul_add` below is a multiply-add that
// GCC fuses in torch's AVX2 build (`-mfma`, default `-ffp-contract=fast`): a product is fused into
// the add that uses it, the first such product in program order when both operands are products.
// Other fusion choices change 1 value in 600 (or, unfused, 1 in 100) by an ulp against the
// reference tensors.

/// `(float)(2.0f * c10::pi<double>)`.
const TWO_PI_F32: f32 = (2.0 * PI) as f32;
/// The normal's std and mean in `_mm256_fmadd_ps(n, std, mean)`.
const STD: f32 = 1.0;
const MEAN: f32 = 0.0;

/// Box-Muller on one block of 16 uniforms, in place: pair `j` is (`data[j]`, `data[j + 8]`).
fn normal_fill_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * log_cephes(u1)).sqrt();
        let theta = TWO_PI_F32 * u2;
        let (sin, cos) = sin_cos_cephes(theta);
        data[j] = (radius * cos).mul_add(STD, MEAN);
        data[j + 8] = (radius * sin).mul_add(STD, MEAN);
    }
}

/// Natural log of a positive `f32`: `log256_ps` of avx_mathfun (Cephes `logf`).
fn log_cephes(x: f32) -> f32 {
    const SQRTHF: f32 = f32::from_bits(0x3f35_04f3); // 0.707106781186547524
    const P: [f32; 9] = [
        f32::from_bits(0x3d90_21bb), // 7.0376836292e-2
        f32::from_bits(0xbdeb_d1b8), // -1.1514610310e-1
        f32::from_bits(0x3def_251a), // 1.1676998740e-1
        f32::from_bits(0xbdfe_5d4f), // -1.2420140846e-1
        f32::from_bits(0x3e11_e9bf), // 1.4249322787e-1
        f32::from_bits(0xbe2a_ae50), // -1.6668057665e-1
        f32::from_bits(0x3e4c_ceac), // 2.0000714765e-1
        f32::from_bits(0xbe7f_fffc), // -2.4999993993e-1
        f32::from_bits(0x3eaa_aaaa), // 3.3333331174e-1
    ];
    const Q1: f32 = f32::from_bits(0xb95e_8083); // -2.12194440e-4
    const Q2: f32 = f32::from_bits(0x3f31_8000); // 0.693359375

    if x.is_nan() || x <= 0.0 {
        return f32::NAN;
    }
    // Denormals are cut off to the smallest normal, as in avx_mathfun.
    let bits = x.max(f32::MIN_POSITIVE).to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    // Mantissa scaled into [0.5, 1).
    let m = f32::from_bits((bits & !0x7f80_0000) | 0x3f00_0000);
    let x = if m < SQRTHF {
        e -= 1.0;
        (m - 1.0) + m
    } else {
        m - 1.0
    };
    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    // `y*z + e*Q1`: the product `y*z` comes first, so it is the one fused.
    y = y.mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    e.mul_add(Q2, x + y)
}

/// `(sin x, cos x)`: `sincos256_ps` of avx_mathfun (Cephes `sinf`/`cosf`), accurate for
/// |x| < 8192; Box-Muller calls it on [0, 2pi).
fn sin_cos_cephes(x: f32) -> (f32, f32) {
    const FOPI: f32 = f32::from_bits(0x3fa2_f983); // 4/pi = 1.27323954473516
    const DP1: f32 = f32::from_bits(0xbf49_0000); // -0.78515625
    const DP2: f32 = f32::from_bits(0xb97d_a000); // -2.4187564849853515625e-4
    const DP3: f32 = f32::from_bits(0xb322_2169); // -3.77489497744594108e-8
    const SIN_P: [f32; 3] = [
        f32::from_bits(0xb94c_a1f9), // -1.9515295891e-4
        f32::from_bits(0x3c08_839e), // 8.3321608736e-3
        f32::from_bits(0xbe2a_aaa3), // -1.6666654611e-1
    ];
    const COS_P: [f32; 3] = [
        f32::from_bits(0x37cc_f5ce), // 2.443315711809948e-5
        f32::from_bits(0xbab6_061a), // -1.388731625493765e-3
        f32::from_bits(0x3d2a_aaa5), // 4.166664568298827e-2
    ];
    const SIGN: u32 = 0x8000_0000;

    let mut sin_sign = x.to_bits() & SIGN;
    let ax = x.abs();
    // Octant, rounded up to even (`cvttps` truncates; `as` saturates, equal in range).
    let j = ((ax * FOPI) as i32 + 1) & !1;
    let y = j as f32;
    if j & 4 != 0 {
        sin_sign ^= SIGN;
    }
    let cos_sign = if (!(j - 2)) & 4 != 0 { SIGN } else { 0 };
    // The sine polynomial serves the sine in octants where `j & 2 == 0`, the cosine elsewhere.
    let sin_poly_for_sin = j & 2 == 0;

    // Extended-precision reduction x - y*pi/4 in three parts.
    let r = y.mul_add(DP1, ax);
    let r = y.mul_add(DP2, r);
    let r = y.mul_add(DP3, r);
    let z = r * r;

    let mut c = COS_P[0];
    c = c.mul_add(z, COS_P[1]);
    c = c.mul_add(z, COS_P[2]);
    c *= z;
    // `c*z - z*0.5`: the product `c*z` comes first, so it is the one fused.
    c = c.mul_add(z, -(z * 0.5));
    c += 1.0;

    let mut s = SIN_P[0];
    s = s.mul_add(z, SIN_P[1]);
    s = s.mul_add(z, SIN_P[2]);
    s *= z;
    s = s.mul_add(r, r);

    let (sin, cos) = if sin_poly_for_sin { (s, c) } else { (c, s) };
    // The vector code merges the two selections by adding +0 to each (which turns -0 into +0),
    // then flips the signs with an xor.
    let sin = f32::from_bits((sin + 0.0).to_bits() ^ sin_sign);
    let cos = f32::from_bits((cos + 0.0).to_bits() ^ cos_sign);
    (sin, cos)
}

// ---- f64 math for the small-tensor path -------------------------------------------------------
//
// torch calls the system `log1p`, `sin` and `cos` here. `log1p` follows glibc's generic version
// (fdlibm with glibc's polynomial evaluation order) operation for operation; glibc's FMA build and
// its table-based `sin`/`cos` can differ from these in the last bit of the f64 result. That matters
// only if it moves the final rounding to f32, which happens about once in 2^29 values.

/// `log1p(x)` for `x > -1` (fdlibm `s_log1p.c`).
fn log1p(x: f64) -> f64 {
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // 6.93147180369123816490e-01
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // 1.90821492927058770002e-10
    const LP: [f64; 7] = [
        f64::from_bits(0x3fe5_5555_5555_5593), // 6.666666666666735130e-01
        f64::from_bits(0x3fd9_9999_9997_fa04), // 3.999999999940941908e-01
        f64::from_bits(0x3fd2_4924_9422_9359), // 2.857142874366239149e-01
        f64::from_bits(0x3fcc_71c5_1d8e_78af), // 2.222219843214978396e-01
        f64::from_bits(0x3fc7_4664_96cb_03de), // 1.818357216161805012e-01
        f64::from_bits(0x3fc3_9a09_d078_c69f), // 1.531383769920937332e-01
        f64::from_bits(0x3fc2_f112_df3e_5244), // 1.479819860511658591e-01
    ];

    let hx = (x.to_bits() >> 32) as u32 as i32;
    let ax = hx & 0x7fff_ffff;
    if x.is_nan() || x < -1.0 {
        return f64::NAN;
    }
    if x == -1.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }

    // `k != 0` means 1 + x is reduced as 2^k * u; `k == 0` means log1p(f) with f = x directly.
    let mut k = 1i32;
    let mut f = 0.0;
    let mut c = 0.0;
    let mut hu = 0u32;
    if hx < 0x3fda_827a {
        // 1 + x < sqrt(2).
        if ax < 0x3e20_0000 {
            // |x| < 2^-29.
            if ax < 0x3c90_0000 {
                return x;
            }
            return x - x * x * 0.5;
        }
        if hx > 0 || hx <= 0xbfd2_bec3_u32 as i32 {
            // -0.2929 < x < 0.41422: 1 + x is already within [sqrt(2)/2, sqrt(2)).
            k = 0;
            f = x;
            hu = 1;
        }
    }
    if k != 0 {
        let mut u;
        if hx < 0x4340_0000 {
            u = 1.0 + x;
            hu = (u.to_bits() >> 32) as u32;
            k = (hu >> 20) as i32 - 1023;
            // Correction for the rounding of 1 + x.
            c = if k > 0 { 1.0 - (u - x) } else { x - (u - 1.0) };
            c /= u;
        } else {
            u = x;
            hu = (u.to_bits() >> 32) as u32;
            k = (hu >> 20) as i32 - 1023;
            c = 0.0;
        }
        hu &= 0x000f_ffff;
        let low = u.to_bits() & 0xffff_ffff;
        if hu < 0x6_a09e {
            // Normalise u into [1, sqrt(2)).
            u = f64::from_bits((u64::from(hu | 0x3ff0_0000) << 32) | low);
        } else {
            // Normalise u/2 into [sqrt(2)/2, 1).
            k += 1;
            u = f64::from_bits((u64::from(hu | 0x3fe0_0000) << 32) | low);
            hu = (0x0010_0000 - hu) >> 2;
        }
        f = u - 1.0;
    }
    let hfsq = 0.5 * f * f;
    let dk = f64::from(k);
    if hu == 0 {
        // |f| < 2^-20.
        if f == 0.0 {
            return if k == 0 { 0.0 } else { dk * LN2_HI + (c + dk * LN2_LO) };
        }
        let r = hfsq * (1.0 - 0.666_666_666_666_666_6 * f);
        return if k == 0 { f - r } else { dk * LN2_HI - ((r - (dk * LN2_LO + c)) - f) };
    }
    let s = f / (2.0 + f);
    let z = s * s;
    // glibc's evaluation order of the polynomial (its pipelined variant of fdlibm's Horner form).
    let z2 = z * z;
    let z4 = z2 * z2;
    let z6 = z4 * z2;
    let r = z * LP[0] + z2 * (LP[1] + z * LP[2]) + z4 * (LP[3] + z * LP[4]) + z6 * (LP[5] + z * LP[6]);
    if k == 0 { f - (hfsq - s * (hfsq + r)) } else { dk * LN2_HI - ((hfsq - (s * (hfsq + r) + (dk * LN2_LO + c))) - f) }
}

/// `(sin x, cos x)` for finite `|x| < 2^20 * pi/2` (fdlibm kernels, Cody-Waite reduction by pi/2).
fn sin_cos_f64(x: f64) -> (f64, f64) {
    const PIO4_HI: u32 = 0x3fe9_21fb; // high word of pi/4
    const INV_PIO2: f64 = f64::from_bits(0x3fe4_5f30_6dc9_c883); // 6.36619772367581382433e-01
    const PIO2_1: f64 = f64::from_bits(0x3ff9_21fb_5440_0000); // first 33 bits of pi/2
    const PIO2_1T: f64 = f64::from_bits(0x3dd0_b461_1a62_6331); // pi/2 - PIO2_1
    const PIO2_2: f64 = f64::from_bits(0x3dd0_b461_1a60_0000); // second 33 bits of pi/2
    const PIO2_2T: f64 = f64::from_bits(0x3ba3_198a_2e03_7073); // pi/2 - (PIO2_1 + PIO2_2)
    const PIO2_3: f64 = f64::from_bits(0x3ba3_198a_2e00_0000); // third 33 bits of pi/2
    const PIO2_3T: f64 = f64::from_bits(0x397b_839a_2520_49c1); // pi/2 - (PIO2_1 + PIO2_2 + PIO2_3)

    let ix = ((x.to_bits() >> 32) as u32) & 0x7fff_ffff;
    if ix <= PIO4_HI {
        // |x| <= pi/4: no reduction.
        if ix < 0x3e50_0000 {
            // |x| < 2^-26: sin x = x and cos x = 1 to within rounding.
            return (x, 1.0);
        }
        return (kernel_sin(x, 0.0, false), kernel_cos(x, 0.0));
    }

    // x = n*pi/2 + (y0 + y1) with |y0 + y1| <= pi/4 (about), to 85, 118 or 151 bits as
    // cancellation needs.
    let n = (x * INV_PIO2).round_ties_even();
    let ex = ix >> 20;
    let exponent = |v: f64| ((v.to_bits() >> 52) & 0x7ff) as u32;
    let mut r = x - n * PIO2_1;
    let mut w = n * PIO2_1T;
    let mut y0 = r - w;
    if ex.saturating_sub(exponent(y0)) > 16 {
        let t = r;
        w = n * PIO2_2;
        r = t - w;
        w = n * PIO2_2T - ((t - r) - w);
        y0 = r - w;
        if ex.saturating_sub(exponent(y0)) > 49 {
            let t = r;
            w = n * PIO2_3;
            r = t - w;
            w = n * PIO2_3T - ((t - r) - w);
            y0 = r - w;
        }
    }
    let y1 = (r - y0) - w;

    let s = kernel_sin(y0, y1, true);
    let c = kernel_cos(y0, y1);
    // n is an exact small integer here, so the cast is exact.
    match (n as i64) & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// sin(x + y) for |x| <= pi/4, `y` the tail of `x` (used when `has_tail`); fdlibm `__kernel_sin`.
fn kernel_sin(x: f64, y: f64, has_tail: bool) -> f64 {
    const S: [f64; 6] = [
        f64::from_bits(0xbfc5_5555_5555_5549), // -1.66666666666666324348e-01
        f64::from_bits(0x3f81_1111_1110_f8a6), // 8.33333333332248946124e-03
        f64::from_bits(0xbf2a_01a0_19c1_61d5), // -1.98412698298579493134e-04
        f64::from_bits(0x3ec7_1de3_57b1_fe7d), // 2.75573137070700676789e-06
        f64::from_bits(0xbe5a_e5e6_8a2b_9ceb), // -2.50507602534068634195e-08
        f64::from_bits(0x3de5_d93a_5acf_d57c), // 1.58969099521155010221e-10
    ];
    let z = x * x;
    let w = z * z;
    let r = S[1] + z * (S[2] + z * S[3]) + z * w * (S[4] + z * S[5]);
    let v = z * x;
    if has_tail { x - ((z * (0.5 * y - v * r) - y) - v * S[0]) } else { x + v * (S[0] + z * r) }
}

/// cos(x + y) for |x| <= pi/4, `y` the tail of `x`; fdlibm `__kernel_cos`.
fn kernel_cos(x: f64, y: f64) -> f64 {
    const C: [f64; 6] = [
        f64::from_bits(0x3fa5_5555_5555_554c), // 4.16666666666666019037e-02
        f64::from_bits(0xbf56_c16c_16c1_5177), // -1.38888888888741095749e-03
        f64::from_bits(0x3efa_01a0_19cb_1590), // 2.48015872894767294178e-05
        f64::from_bits(0xbe92_7e4f_809c_52ad), // -2.75573143513906633035e-07
        f64::from_bits(0x3e21_ee9e_bdb4_b1c4), // 2.08757232129817482790e-09
        f64::from_bits(0xbda8_fae9_be88_38d4), // -1.13596475577881948265e-11
    ];
    let z = x * x;
    let w = z * z;
    let r = z * (C[0] + z * (C[1] + z * C[2])) + w * w * (C[3] + z * (C[4] + z * C[5]));
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    w + (((1.0 - w) - hz) + (z * r - x * y))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard mt19937 reference outputs (seed 5489, the C++ default): the first and the 10000th.
    #[test]
    fn mt19937_reference_outputs() {
        let mut rng = TorchRng::new(5489);
        assert_eq!(rng.next_u32(), 3_499_211_612);
        for _ in 1..9_999 {
            rng.next_u32();
        }
        assert_eq!(rng.next_u32(), 4_123_659_995);
    }

    /// `std::mt19937(0)`, which is what `torch.manual_seed(0)` builds; `torch.rand(1)` after it is
    /// 0.4963 = (2357136044 & 0xffffff) / 2^24.
    #[test]
    fn torch_seed_zero_outputs() {
        let mut rng = TorchRng::new(0);
        assert_eq!(rng.next_u32(), 2_357_136_044);
        assert_eq!(rng.next_u32(), 2_546_248_239);
        assert_eq!(rng.next_u32(), 3_071_714_933);
        let mut rng = TorchRng::new(0);
        assert!((rng.uniform_f32() - 0.4963).abs() < 5e-5);
    }

    /// Only the low 32 bits of the seed matter, as in torch's engine.
    #[test]
    fn seed_is_truncated_to_32_bits() {
        let mut a = TorchRng::new(0x1_0000_0007);
        let mut b = TorchRng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 5e-5, "element {i}: got {g}, want {w}");
        }
    }

    /// `torch.manual_seed(0); torch.randn(2, 3)` (the f64 scalar path with the cached sample).
    #[test]
    fn small_randn_matches_torch() {
        let mut rng = TorchRng::new(0);
        assert_close(&rng.randn(5), &[1.5410, -0.2934, -2.1788, 0.5684, -1.0845]);
        let mut rng = TorchRng::new(0);
        assert_close(&rng.randn(6), &[1.5410, -0.2934, -2.1788, 0.5684, -1.0845, -1.3986]);
    }

    /// The cached sine half survives between calls (and across a large draw, which ignores it).
    #[test]
    fn small_randn_carries_cached_sample() {
        let mut a = TorchRng::new(3);
        let whole = a.randn(6);
        let mut b = TorchRng::new(3);
        let mut parts = b.randn(5);
        parts.extend(b.randn(1));
        assert_eq!(whole, parts);
        assert!(b.next_normal.is_none());

        let mut c = TorchRng::new(3);
        let first = c.randn(5);
        let big = c.randn(32);
        let last = c.randn(1);
        assert_eq!(first, whole[..5]);
        assert_eq!(last[0], whole[5]);
        let mut d = TorchRng::new(3);
        for _ in 0..12 {
            d.next_u32();
        }
        assert_eq!(d.randn(32), big);
    }

    /// `torch.manual_seed(0); torch.randn(4, 4)`, exactly: the first 16 values of the recorded
    /// diffusers latent for seed 0 (fixture `txt2img_ddim`, `randn_00`), as f32 bit patterns.
    #[test]
    fn large_randn_matches_torch() {
        const WANT: [u32; 16] = [
            0xbf90_1b85,
            0xbf93_808a,
            0xbe80_4bd6,
            0xbede_255d,
            0x3f59_4515,
            0x3f31_2783,
            0xbea1_cc6d,
            0xc007_5fc1,
            0x3ea5_0138,
            0xbfa1_b4f4,
            0x3eb3_30ff,
            0x3e9d_c3bb,
            0x3df5_6f77,
            0x3f9e_6b93,
            0x3f8e_f28e,
            0xbe7d_367c,
        ];
        let mut rng = TorchRng::new(0);
        let got: Vec<u32> = rng.randn(16).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, WANT);
        assert_close(
            &TorchRng::new(0).randn(16),
            &[
                -1.1258, -1.1524, -0.2506, -0.4339, 0.8487, 0.6920, -0.3160, -2.1152, 0.3223, -1.2633, 0.3500, 0.3081,
                0.1198, 1.2377, 1.1168, -0.2473,
            ],
        );
    }

    /// A size that is not a multiple of 16: full blocks first, then the last 16 elements redrawn.
    #[test]
    fn large_randn_tail_is_redrawn() {
        let full = TorchRng::new(9).randn(16);
        let mut rng = TorchRng::new(9);
        let odd = rng.randn(20);
        assert_eq!(odd[..4], full[..4]);
        let mut skip = TorchRng::new(9);
        for _ in 0..20 {
            skip.next_u32();
        }
        assert_eq!(odd[4..], skip.randn(16)[..]);
        // The generator has consumed 20 + 16 outputs.
        assert_eq!(rng.next_u32(), skip.next_u32());
    }

    #[test]
    fn randn_statistics_are_standard_normal() {
        for numel in [0usize, 1, 15, 16, 17, 4096] {
            assert_eq!(TorchRng::new(1).randn(numel).len(), numel);
        }
        let v = TorchRng::new(42).randn(1 << 16);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
        assert!(v.iter().all(|x| x.is_finite()));
    }

    /// The Cephes f32 functions are accurate to a few ulps over the range Box-Muller uses.
    #[test]
    fn cephes_functions_are_accurate() {
        for i in 1..=1000u32 {
            let u = i as f32 / 1000.0;
            let want = f64::from(u).ln();
            assert!((f64::from(log_cephes(u)) - want).abs() < 1e-6_f64.max(want.abs() * 1e-6));
            let t = TWO_PI_F32 * (i - 1) as f32 / 1000.0;
            let (s, c) = sin_cos_cephes(t);
            assert!((f64::from(s) - f64::from(t).sin()).abs() < 1e-6);
            assert!((f64::from(c) - f64::from(t).cos()).abs() < 1e-6);
        }
    }

    /// The f64 functions agree with the platform's to within an ulp or so.
    #[test]
    fn f64_functions_are_accurate() {
        let mut rng = TorchRng::new(11);
        for _ in 0..20_000 {
            let u = rng.uniform_f64();
            let want = (-u).ln_1p();
            assert!((log1p(-u) - want).abs() <= want.abs() * 4.0 * f64::EPSILON);
            let t = 2.0 * PI * u;
            let (s, c) = sin_cos_f64(t);
            assert!((s - t.sin()).abs() <= 4.0 * f64::EPSILON);
            assert!((c - t.cos()).abs() <= 4.0 * f64::EPSILON);
        }
    }
}
