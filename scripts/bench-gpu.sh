#!/usr/bin/env bash
# The benchmark's GPU part, for a machine with a GPU, Vulkan, and CUDA torch with diffusers (not this
# project's CI machine): the full-size SD1.5-shaped U-Net, websd natively on wgpu (Vulkan) against
# diffusers' torch on CUDA, in f32 (TF32 off on both sides) and f16, alternating call by call; then the
# U-Net's ops one by one (op_bench at 64x64 latents). Writes into OUT_DIR what
# `scripts/bench.sh --only gpu --gpu OUT_DIR` puts into BENCHMARKS.md:
#
#   scripts/bench-gpu.sh OUT_DIR [UNET_CONFIG]
#
# The U-Net's weights are made here, as ../shared/oracle/step4_fullsize.py made them (torch seed 0,
# diffusers' default initialisation, saved fp16), from UNET_CONFIG (default: the SD 1.5 U-Net config in
# web/bench/sd15_unet_config.json). The binaries come from CARGO_TARGET_DIR, or UNET_IO_CHECK and
# OP_BENCH where they were built elsewhere. TORCH_DEVICE (default cuda), SIZES (latent sizes, default
# 32,64) and OPS_LATENT (default 64) exist to try the script out on a small model without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "$1"); config=${2:-web/bench/sd15_unet_config.json}
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-target}
uic=${UNET_IO_CHECK:-$target/release/examples/unet_io_check}
ops=${OP_BENCH:-$target/release/examples/op_bench}
py=${PYTHON:-python3}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
model=$(mktemp -d)
trap 'rm -rf "$model"' EXIT
"$py" - "$config" "$model/unet" <<'PY'
import json, sys, torch
from diffusers import UNet2DConditionModel
torch.manual_seed(0)
UNet2DConditionModel.from_config(json.load(open(sys.argv[1]))).half().save_pretrained(sys.argv[2], variant="fp16")
PY
for mode in "f32 --ours wgpu" "f16 --torch-dtype f16 --ours wgpu-f16"; do
  set -- $mode; name=$1; shift
  "$py" web/bench/native.py "$model" "$uic" 5 "$model" --torch-device "${TORCH_DEVICE:-cuda}" \
    --sizes "${SIZES:-32,64}" "$@" > "$out/unet-$name.json"
done
# Its adapter line goes to stderr.
"$ops" "${OPS_LATENT:-64}" wgpu > "$out/ops-f32.txt" 2>&1
"$ops" "${OPS_LATENT:-64}" wgpu-f16 > "$out/ops-f16.txt" 2>&1
{ echo "{"; echo "  \"date\": \"$(date -u +%FT%TZ)\","; echo "  \"websd\": \"$(git rev-parse --short HEAD)\","
  echo "  \"gpu\": \"$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)\","
  echo "  \"cpu\": \"$(nproc) cores\""; echo "}"; } > "$out/meta.json"
