#!/usr/bin/env bash
# Runs every test: native (Flex CPU + native wgpu), browser (wasm-bindgen-test in headless Chromium,
# WebGPU in a dedicated worker, plus the negative control without WebGPU), TypeScript type checks, the
# release web build and the Playwright end-to-end test against it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/setup.sh
source scripts/env.sh

step() { printf '\n\033[1;32m[test]\033[0m %s\n' "$*" >&2; }
timed() { local t0=$SECONDS; "$@"; printf '\033[1;32m[test]\033[0m   (%ss)\n' $((SECONDS - t0)) >&2; }

# One profile (release) everywhere, so the tests reuse the `sd` binary's build and the web build reuses
# the browser tests' dependency build.
step "native tests (cargo test --release)"
timed cargo test --release --workspace

step "browser tests: WebGPU in a dedicated worker (headless Chromium)"
export WASM_BINDGEN_TEST_WEBDRIVER_JSON=$root/tests/webdriver.json
timed cargo test --release --target wasm32-unknown-unknown -p websd-tests

step "browser tests, negative control: without --enable-unsafe-webgpu the GPU tests must fail"
# CPU-only browser tests are named *_in_wasm; every other browser test needs WebGPU and must fail here,
# for lack of an adapter.
log=$(mktemp)
WASM_BINDGEN_TEST_WEBDRIVER_JSON=$root/tests/webdriver-no-webgpu.json \
  cargo test --release --target wasm32-unknown-unknown -p websd-tests --no-fail-fast >"$log" 2>&1 || true
passed_gpu=$(grep -E '^test [a-z0-9_]+ \.\.\. ok$' "$log" | grep -v '_in_wasm \.\.\. ok$' || true)
failed=$(grep -cE '^test [a-z0-9_]+ \.\.\. FAIL$' "$log" || true)
if [ -n "$passed_gpu" ] || [ "$failed" -eq 0 ] || ! grep -q "No suitable graphics adapter found" "$log"; then
  cat "$log"; echo "negative control failed: GPU tests passed without WebGPU, or failed for another reason" >&2; exit 1
fi
echo "ok: without WebGPU all $failed GPU browser tests fail with 'No suitable graphics adapter found'" >&2
unset WASM_BINDGEN_TEST_WEBDRIVER_JSON

step "TypeScript: tsc --noEmit (page, worker, node)"
timed npm --prefix web run --silent typecheck

step "web build: trunk build --release"
timed trunk build --release
# wasm-ld wraps the exports of a module that never calls __wasm_call_ctors in a call to it (named
# *.command_export); the glue then re-runs cubecl's constructors at every JS value it passes to wasm.
# gpu::run_static_constructors calls it once; this fails if the wrappers ever come back.
if grep -q '_command_export' dist/websd.js; then
  echo "dist/websd.js calls *_command_export wrappers: the static constructors run at every export call" >&2
  exit 1
fi

step "end to end: Playwright (Debian Chromium) against dist/"
timed npm --prefix web run --silent e2e
