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

step "browser tests, negative control: without --enable-unsafe-webgpu they must fail"
log=$(mktemp)
if WASM_BINDGEN_TEST_WEBDRIVER_JSON=$root/tests/webdriver-no-webgpu.json \
  cargo test --release --target wasm32-unknown-unknown -p websd-tests >"$log" 2>&1; then
  cat "$log"; echo "the browser tests passed without WebGPU: they do not exercise it" >&2; exit 1
fi
grep -q "no GPU adapter available" "$log" || { cat "$log"; echo "negative control failed for another reason" >&2; exit 1; }
echo "ok: without WebGPU the browser tests fail with 'no GPU adapter available'" >&2
unset WASM_BINDGEN_TEST_WEBDRIVER_JSON

step "TypeScript: tsc --noEmit (page, worker, node)"
timed npm --prefix web run --silent typecheck

step "web build: trunk build --release"
timed trunk build --release

step "end to end: Playwright (Debian Chromium) against dist/"
timed npm --prefix web run --silent e2e
