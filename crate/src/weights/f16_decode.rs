//! Half-precision weights to f32, for devices without `shader-f16`. Loading SD 1.5's fp16 files in the
//! browser decodes about a billion halves on the worker thread; `half`'s scalar conversion took 2.5 to
//! 3.6 s of that load, so wasm (whose every WebGPU browser runs SIMD128) decodes eight at a time.

use burn::tensor::f16;

/// Little-endian f16 bytes (an even number of them) as f32, exactly as `half::f16::to_f32` gives them
/// (NaNs stay NaN, their payload may differ).
pub fn f16_le_to_f32(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / 2);
    extend_f16_le_to_f32(&mut out, bytes);
    out
}

/// [`f16_le_to_f32`], appended to `out` (a tensor decoded part by part into one vector).
pub fn extend_f16_le_to_f32(out: &mut Vec<f32>, bytes: &[u8]) {
    let n = bytes.len() / 2;
    out.reserve(n);
    #[cfg(target_arch = "wasm32")]
    {
        let len = out.len();
        // SAFETY: `decode` initialises every element of the spare capacity it is given (n of them).
        unsafe {
            simd::decode(&bytes[..2 * n], &mut out.spare_capacity_mut()[..n]);
            out.set_len(len + n);
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    out.extend(bytes.chunks_exact(2).map(|b| scalar([b[0], b[1]])));
}

fn scalar(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

#[cfg(target_arch = "wasm32")]
mod simd {
    use std::arch::wasm32::*;
    use std::mem::MaybeUninit;

    /// Eight halves per iteration, without branches (Fabian Giesen's `half_to_float_fast5`: move the
    /// exponent and mantissa bits into place and rebias; infinities and NaNs get the rest of the bias,
    /// zeros and subnormals are renormalised with one float subtraction).
    #[target_feature(enable = "simd128")]
    fn four(h: v128) -> v128 {
        const SHIFTED_EXP: i32 = 0x7c00 << 13;
        let mut o = i32x4_shl(v128_and(h, i32x4_splat(0x7fff)), 13);
        let exp = v128_and(o, i32x4_splat(SHIFTED_EXP));
        o = i32x4_add(o, i32x4_splat((127 - 15) << 23));
        let inf_nan = i32x4_eq(exp, i32x4_splat(SHIFTED_EXP));
        o = i32x4_add(o, v128_and(inf_nan, i32x4_splat((128 - 16) << 23)));
        let zero_sub = i32x4_eq(exp, i32x4_splat(0));
        let renormalised = f32x4_sub(i32x4_add(o, i32x4_splat(1 << 23)), f32x4_splat(f32::from_bits(113 << 23)));
        o = v128_bitselect(renormalised, o, zero_sub);
        v128_or(o, i32x4_shl(v128_and(h, i32x4_splat(0x8000)), 16))
    }

    /// `out[i]` = half `i` of `bytes`; `bytes.len() == 2 * out.len()`.
    #[target_feature(enable = "simd128")]
    pub(super) fn decode(bytes: &[u8], out: &mut [MaybeUninit<f32>]) {
        assert_eq!(bytes.len(), 2 * out.len());
        let blocks = out.len() / 8;
        for i in 0..blocks {
            // SAFETY: 16 bytes from 16 * i and 8 floats from 8 * i are in bounds (i < len / 8);
            // wasm loads and stores need no alignment.
            unsafe {
                let halves = v128_load(bytes.as_ptr().add(16 * i) as *const v128);
                let dst = out.as_mut_ptr().add(8 * i) as *mut v128;
                v128_store(dst, four(u32x4_extend_low_u16x8(halves)));
                v128_store(dst.add(1), four(u32x4_extend_high_u16x8(halves)));
            }
        }
        for i in 8 * blocks..out.len() {
            out[i].write(super::scalar([bytes[2 * i], bytes[2 * i + 1]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_half_decodes_like_half() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let got = f16_le_to_f32(&bytes);
        for (bits, value) in (0..=u16::MAX).zip(got) {
            let want = scalar(bits.to_le_bytes());
            assert!(value.to_bits() == want.to_bits() || (want.is_nan() && value.is_nan()), "{bits:#06x}");
        }
    }
}
