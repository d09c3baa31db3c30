#!/usr/bin/env bash
# Makes here what the lent GPU machine lacks for scripts/bench-gpu.sh, which it cannot fetch (the device
# tool's machine reaches nothing outside it): the Vulkan loader's .deb files (`.gl`; its image has
# NVIDIA's driver but maybe no loader), the wheels of diffusers and the one dependency its image lacks
# (`.whl`), and op_bench and unet_io_check built here in release, stripped (`.gpu/bins.tar.xz`, with
# the commit in `.gpu/commit`). All three are ignored (`.git/info/exclude`) and travel as `carry`.
# Prints the device call at the end. Then, around that call:
#
#   scripts/gpu-prepare.sh detach   before it: tests/fixtures (~190 MB) out of the index and ignored,
#                                   since the tree that travels is limited to 64 MiB
#   scripts/gpu-prepare.sh attach   after it (or whenever `git status` shows the fixtures deleted)
#
# The device machine runs scripts/gpu-run.sh, which unpacks these and runs bench-gpu.sh into $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
ignore() { grep -qxF "$1" "$exclude" 2>/dev/null || echo "$1" >> "$exclude"; }

case "${1:-}" in
  detach)
    ignore /tests/fixtures/
    git rm -r -q --cached tests/fixtures
    echo "tests/fixtures detached: run 'scripts/gpu-prepare.sh attach' after the device call, before any commit" >&2
    exit 0
    ;;
  attach)
    sed -i '\#^/tests/fixtures/$#d' "$exclude"
    git reset -q -- tests/fixtures
    git status --short -- tests/fixtures | head -3
    exit 0
    ;;
  "") ;;
  *) echo "usage: scripts/gpu-prepare.sh [detach|attach]" >&2; exit 2 ;;
esac

source scripts/env.sh
for d in /.gl/ /.whl/ /.gpu/; do ignore "$d"; done

# The loader alone: NVIDIA's ICD comes with the driver there (gpu-run.sh points VK_DRIVER_FILES at it).
rm -rf .gl && mkdir -p .gl /tmp/amd64/partial
apt=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${apt[@]}" -qq update
(cd .gl && apt-get "${apt[@]}" -qq download libvulkan1)

# The image's Python is 3.12 and holds torch, huggingface_hub, safetensors, regex, requests, Pillow,
# filelock and zipp, but not diffusers (0.42.1 made the fixtures) nor importlib_metadata.
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==8.7.0

cargo build --release --example op_bench --example unet_io_check
bins=$(mktemp -d)
cp "$CARGO_TARGET_DIR"/release/examples/{op_bench,unet_io_check} "$bins"
strip "$bins"/*
rm -rf .gpu && mkdir -p .gpu
tar -cJf .gpu/bins.tar.xz -C "$bins" op_bench unet_io_check
rm -rf "$bins"
git rev-parse --short HEAD > .gpu/commit
[ -z "$(git status --porcelain --untracked-files=no -- crate)" ] || echo "$(cat .gpu/commit) + uncommitted changes in crate/" > .gpu/commit
du -sh .gl .whl .gpu

cat <<'EOF'

The device call (one, about 10 minutes of the session's 15), after `scripts/gpu-prepare.sh detach`:
  run  command: bash scripts/gpu-run.sh   carry: [".gl", ".whl", ".gpu"]   timeout_s: 600
then `scripts/gpu-prepare.sh attach`, `give_back`, and `scripts/bench.sh --only gpu --gpu <files_at>`
(BENCHMARKS.md's "Native on a real GPU"; log.txt holds each step's time and the kernels' picks).
EOF
