//! GEGLU (diffusers' `GEGLU`, the transformer blocks' feed-forward activation) as one kernel:
//! `value * gelu(gate)` over the two halves of the projection. burn runs it as a copy of each half,
//! five launches for the exact GELU (divide, erf, add, multiply, divide) and a multiply, each a
//! pass over `[tokens, inner]`; here one pass reads the projection once and writes the product.

use burn::tensor::Tensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;

/// Invocations per workgroup, one output value each.
const LANES: usize = 64;

#[cube(launch_unchecked)]
fn geglu_rows<E: Float>(h: &[E], output: &mut [E], inner: usize, #[define(E)] _dtype: ElemType) {
    let at = (CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize) * LANES + UNIT_POS_X as usize;
    if at < output.len() {
        let row = at / inner;
        let j = at % inner;
        let value = f32::cast_from(h[row * 2 * inner + j]);
        let gate = f32::cast_from(h[row * 2 * inner + inner + j]);
        // burn's exact GELU, in its order: x * (erf(x / sqrt 2) + 1) / 2, in f32.
        let gelu = gate * (Erf::erf(gate / f32::new(core::f32::consts::SQRT_2)) + 1.0) / 2.0;
        output[at] = E::cast_from(value * gelu);
    }
}

/// `h[.., :inner] * gelu(h[.., inner:])` (exact GELU, burn's `gelu`), or `None` when `h` is not an
/// f32/f16 cubecl tensor or its width is odd.
///
/// # Shapes
/// - h: `[rows, 2 * inner]`
/// - output: `[rows, inner]`
pub fn geglu(h: &Tensor<2>) -> Option<Tensor<2>> {
    let [rows, width] = h.dims();
    if width % 2 != 0 || rows * width == 0 {
        return None;
    }
    let dtype = h.dtype();
    let h = super::cube_tensor(h, dtype)?;
    let inner = width / 2;
    let output = empty_device_dtype(h.client.clone(), h.device.clone(), [rows, inner].into(), dtype);
    let client = h.client.clone();
    unsafe {
        geglu_rows::launch_unchecked(
            &client,
            super::grid_1d(rows * inner, LANES),
            CubeDim::new_1d(LANES as u32),
            h.into_buffer_arg(),
            output.clone().into_buffer_arg(),
            inner,
            burn::backend::cubecl::dtype_to_storage_type(dtype),
        );
    }
    Some(Tensor::from_primitive::<CubeBackend>(output))
}
