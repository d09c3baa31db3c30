# Sourced by the scripts: the environment the builds and tests run in.
# Native wgpu (Vulkan, lavapipe on machines without a GPU) wants a runtime dir.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
# The browser tests compile shaders on SwiftShader: give each test more than the default 20 s.
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300}
# One target dir for every command (tests, serve, benches), outside the repo: a fresh clone (CI) and a
# newcomer's serve after the tests reuse the same native and wasm builds.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/websd-target}
mkdir -p "$CARGO_TARGET_DIR"
# Tools from npm (wasm-opt of binaryen 132, used by Trunk) come before the system's, and scripts/bin's
# caching wasm-opt before those.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$repo_root/scripts/bin:$repo_root/web/node_modules/.bin:$PATH"
unset repo_root
