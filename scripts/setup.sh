#!/usr/bin/env bash
# Installs whatever the build and the tests need and is missing; skips what is present.
# Debian packages (chromium, chromium-driver, mesa-vulkan-drivers), the wasm32 target, the wasm-bindgen
# CLI of exactly the version in Cargo.lock, Trunk 0.21.14, wasm-pack 0.15.1, and the npm packages (including binaryen's
# wasm-opt: Debian 12's binaryen 108 corrupts wasm-bindgen's externref table, see README).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each line says how many seconds setup had taken when it began.
log() { printf '\033[1;34m[setup %4ss]\033[0m %s\n' "$SECONDS" "$*" >&2; }

apt_packages=(chromium chromium-driver mesa-vulkan-drivers)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# Tools are built in cargo's own temporary dirs, not in the project's target dir.
install_tool() { # crate version binary [--locked]
  local crate=$1 version=$2 bin=$3; shift 3
  if ! "$bin" --version 2>/dev/null | grep -q " $version\b"; then
    log "cargo install $crate $version"
    env -u CARGO_TARGET_DIR cargo install "$crate" --version "$version" "$@"
  fi
}
wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
# Not --locked: a locked dependency of the CLI (webpki-roots) is not served by the registry mirror.
install_tool wasm-bindgen-cli "$wasm_bindgen_version" wasm-bindgen
# Trunk's own release profile is fat LTO with one codegen unit: 15.3 min to build on 2 cores. Unoptimised,
# with no TLS (it runs offline here: no update check, no https serving), it builds in 2.8 min and writes
# the same dist/ byte for byte, 2 s slower per build (its work is wasm-bindgen's and wasm-opt's).
CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  install_tool trunk 0.21.14 trunk --locked --no-default-features
# wasm-pack builds the engine's npm package (Trunk.toml's hook) and runs the browser tests (scripts/test.sh);
# it uses the wasm-bindgen above and wasm-opt from PATH (`--mode no-install`). Unoptimised as Trunk: 33 s.
CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  install_tool wasm-pack 0.15.1 wasm-pack --locked

if [ ! -f web/node_modules/.package-lock.json ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
  log "npm ci"
  (cd web && npm ci --no-audit --no-fund)
fi
log "done"
