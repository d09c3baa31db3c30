//! Weight decoding in wasm, where it takes its SIMD128 path: every half must decode to the f32 that
//! `half` gives (the path the native build and the numerics tests use).
#![cfg(target_arch = "wasm32")]

use burn::tensor::f16;
use wasm_bindgen_test::*;
use websd::weights::{extend_f16_le_to_f32, f16_le_to_f32};

#[wasm_bindgen_test]
fn every_half_decodes_like_half_in_wasm() {
    // Odd offsets and lengths too: the SIMD loop reads 16 unaligned bytes at a time, then a scalar tail.
    let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    for (skip, len) in [(0, bytes.len()), (2, bytes.len() - 2), (6, 2 * 13), (0, 2 * 7), (1, 2 * 9)] {
        let slice = &bytes[skip..skip + len];
        let got = f16_le_to_f32(slice);
        assert_eq!(got.len(), len / 2);
        for (i, value) in got.into_iter().enumerate() {
            let want = f16::from_le_bytes([slice[2 * i], slice[2 * i + 1]]).to_f32();
            assert!(
                value.to_bits() == want.to_bits() || (want.is_nan() && value.is_nan()),
                "{skip} {i}: {value} vs {want}"
            );
        }
    }
}

#[wasm_bindgen_test]
fn halves_decoded_in_parts_append_in_wasm() {
    // The loader decodes a tensor read by read into one vector: each part lands after what is there.
    let bytes: Vec<u8> = (0..4099u16).map(|i| i.wrapping_mul(16411)).flat_map(u16::to_le_bytes).collect();
    let whole = f16_le_to_f32(&bytes);
    let mut parts = vec![1.5f32];
    for part in bytes.chunks(2 * 37) {
        extend_f16_le_to_f32(&mut parts, part);
    }
    assert_eq!(parts.len(), 1 + whole.len());
    assert_eq!(parts[0], 1.5);
    for (i, (a, b)) in parts[1..].iter().zip(&whole).enumerate() {
        assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{i}: {a} vs {b}");
    }
}
