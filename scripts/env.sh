# Sourced by the scripts: the environment the builds and tests run in.
# Native wgpu (Vulkan, lavapipe on machines without a GPU) wants a runtime dir.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
# The browser tests compile shaders on SwiftShader: give each test more than the default 20 s.
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300}
# Tools from npm (wasm-opt of binaryen 132, used by Trunk) come before the system's.
export PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/web/node_modules/.bin:$PATH"
