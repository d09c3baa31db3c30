//! Browser tests of the `websd` crate. They live in `browser/` and run with
//! `cargo test --target wasm32-unknown-unknown -p websd-tests` under `wasm-bindgen-test-runner` in headless
//! Chromium, inside a dedicated Web Worker (where the app's engine runs). See `scripts/test.sh`.
