//! The browser tests in one binary: one wasm link and one wasm-bindgen pass instead of one per file.
//! They run one after another in a single dedicated Web Worker (where the app's engine runs).
#![cfg(target_arch = "wasm32")]

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_dedicated_worker);

mod schedulers;
mod store;
mod tokenizer;
mod webgpu;
mod weights;
