#!/usr/bin/env bash
# Runs every test: native (Flex CPU + native wgpu), browser (wasm-bindgen-test in headless Chromium,
# WebGPU in a dedicated worker, plus the negative control without WebGPU), TypeScript type checks, the
# release web build and the Playwright end-to-end tests against it. Prints each step's time at the end.
#
# On 2 cores every step is CPU-bound, but few keep both cores busy: lavapipe compiles each shader on one
# thread, wasm-opt runs single-threaded under Node.js, and a SwiftShader generation leaves gaps. So the
# builds run first (they hold cargo's lock), then the native tests run in the background through all the
# rest (the wasm build, the browser tests, the web build beside them, the type checks and the end-to-end
# suite, whose files run two at a time), and are joined last.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
logs=$(mktemp -d)

step_names=() step_secs=()
summary() {
  local status=$?
  printf '\n\033[1;32m[test]\033[0m step times (s):\n' >&2
  for i in "${!step_names[@]}"; do printf '  %6s  %s\n' "${step_secs[i]}" "${step_names[i]}" >&2; done
  printf '  %6s  total%s\n' "$SECONDS" "$([ "$status" -eq 0 ] || echo " (FAILED)")" >&2
  for pid in "${bg_pid[@]}"; do kill_tree "$pid"; done
}
# A background step that is still running when the script stops (a failure elsewhere) must not go on
# writing dist/ or the target dir: stop it with everything it started.
kill_tree() {
  local child
  for child in $(pgrep -P "$1"); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}
trap summary EXIT
step() { printf '\n\033[1;32m[test %s]\033[0m %s\n' "$(date +%T)" "$*" >&2; }
# timed NAME CMD...: runs CMD in the foreground and records its time under NAME.
timed() {
  local name=$1 t0=$SECONDS; shift
  step "$name"
  "$@"
  step_names+=("$name") step_secs+=($((SECONDS - t0)))
}
# Background steps: started with `spawn NAME CMD...`, their output kept in a log until `join NAME`, which
# waits, prints the log and fails if the step failed.
declare -A bg_pid bg_t0
spawn() {
  local name=$1; shift
  step "$name (started in the background)"
  bg_t0[$name]=$SECONDS
  "$@" >"$logs/$name.log" 2>&1 &
  bg_pid[$name]=$!
}
join() {
  local name=$1 rc=0
  wait "${bg_pid[$name]}" || rc=$?
  unset "bg_pid[$name]"
  step "$name (background) finished"
  cat "$logs/$name.log" >&2
  step_names+=("$name (background, from its start)") step_secs+=($((SECONDS - bg_t0[$name])))
  [ "$rc" -eq 0 ] || { echo "$name failed (exit $rc)" >&2; exit "$rc"; }
}

timed "setup (apt, tools, npm)" scripts/setup.sh
source scripts/env.sh

# One profile (release) everywhere, so the tests reuse the `sd` binary's build and the web build reuses
# the browser tests' dependency build.
timed "native: build tests" cargo test --release --workspace --no-run
spawn "native: run tests" cargo test --release --workspace
# cargo holds the target dir's lock while it builds, not while tests run: let the native cargo check that
# its build is fresh and start its first test binary before the wasm build takes the lock (otherwise
# the native tests wait for the whole wasm compile, as they did in the first fresh run).
until grep -q '^ *Running ' "$logs/native: run tests.log" || ! kill -0 "${bg_pid[native: run tests]}" 2>/dev/null; do
  sleep 1
done
timed "browser: build tests (wasm32)" cargo test --release --target wasm32-unknown-unknown -p websd-tests --no-run

web_build() {
  trunk build --release
  # wasm-ld wraps the exports of a module that never calls __wasm_call_ctors in a call to it (named
  # *.command_export); the glue then re-runs cubecl's constructors at every JS value it passes to wasm.
  # gpu::run_static_constructors calls it once; this fails if the wrappers ever come back.
  if grep -q '_command_export' dist/websd.js; then
    echo "dist/websd.js calls *_command_export wrappers: the static constructors run at every export call" >&2
    return 1
  fi
}
spawn "web build: trunk build --release" web_build

# wasm-pack runs the browser tests: it builds them (already built above), then runs them through the
# wasm-bindgen-test-runner of the installed wasm-bindgen-cli in headless Chromium, driven by Debian's
# chromedriver (both from PATH: `--mode no-install` never downloads). Extra arguments go to cargo test.
wasm_pack_test() { wasm-pack test --headless --chrome --release --mode no-install tests "$@"; }
browser_tests() {
  WASM_BINDGEN_TEST_WEBDRIVER_JSON=$root/tests/webdriver.json wasm_pack_test
}
timed "browser: WebGPU in a dedicated worker (headless Chromium)" browser_tests

negative_control() {
  # CPU-only browser tests are named *_in_wasm; every other browser test needs WebGPU and must fail
  # here, for lack of an adapter.
  local log passed_gpu failed
  log=$(mktemp)
  WASM_BINDGEN_TEST_WEBDRIVER_JSON=$root/tests/webdriver-no-webgpu.json wasm_pack_test >"$log" 2>&1 || true
  passed_gpu=$(grep -E '^test [a-z0-9_:]+ \.\.\. ok$' "$log" | grep -v '_in_wasm \.\.\. ok$' || true)
  failed=$(grep -cE '^test [a-z0-9_:]+ \.\.\. FAIL$' "$log" || true)
  if [ -n "$passed_gpu" ] || [ "$failed" -eq 0 ] || ! grep -q "No suitable graphics adapter found" "$log"; then
    cat "$log"
    echo "negative control failed: GPU tests passed without WebGPU, or failed for another reason" >&2
    return 1
  fi
  echo "ok: without WebGPU all $failed GPU browser tests fail with 'No suitable graphics adapter found'" >&2
}
timed "browser, negative control: without --enable-unsafe-webgpu the GPU tests must fail" negative_control

timed "TypeScript: tsc --noEmit (page, worker, node)" npm --prefix web run --silent typecheck
join "web build: trunk build --release"

# Niced: the native tests beside it bound some answers by wall-clock time (a bad model config refused
# within 2 s, bad_inputs.rs), the e2e suite only by minutes-long timeouts; so the native tests keep
# their share of the cores and the e2e suite takes the rest (one warm run took 2.6 s for a 2 s case
# when the two ran at the same priority).
timed "end to end: Playwright (Debian Chromium) against dist/" nice -n 10 npm --prefix web run --silent e2e
join "native: run tests"
