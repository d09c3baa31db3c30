#!/usr/bin/env bash
# The benchmark's GPU part, for a machine with a GPU, Vulkan, and CUDA torch with diffusers (not this
# project's CI machine): the full-size SD1.5-shaped U-Net, websd natively on wgpu (Vulkan) against
# diffusers' torch on CUDA, in f32 (TF32 off on both sides) and f16, alternating call by call; our
# convolution kernel in every tiling against burn's on the U-Net's conv shapes; then the U-Net's ops one
# by one (op_bench at 64x64 latents). Writes into OUT_DIR what `scripts/bench.sh --only gpu --gpu OUT_DIR`
# puts into BENCHMARKS.md (8 files: a device lease returns no more):
#
#   scripts/bench-gpu.sh OUT_DIR [UNET_CONFIG]
#
# Steps, most wanted first, each cut off where the time left (BUDGET_S, default 3600 s from the start)
# runs out, so a lease that ends early still returns the first ones:
#  1. unet-f32.json / unet-f16.json: native.py, the U-Net call beside torch at SIZES (default 64)
#     latents, one websd process per VARIANTS value (default burn,tune): burn's kernels only
#     (WEBSD_KERNELS=burn) and each op's kernels measured on the GPU during the first call (tune: what
#     an adapter not measured by hand gets, in the browser too; the picks go to log.txt). The hand-made
#     choices `conv` (our convolution) and `ours` (+ attention, linear, norms) can be added to VARIANTS;
#     then step 2 runs first, for their tiling.
#  2. tilings-f32.txt: op_bench's `tilings`, burn's conv against ours in every tiling, the scalar
#     kernel's and the vectorized one's ("+vec4"): the convolutions' roofline. The workgroup target
#     whose picks (Tiling::for_workgroups, scalar) sum to the least time is what `conv` and `ours` run.
#  3. ops-f32.txt, then tilings-f16.txt and ops-f16.txt (op_bench `all`: attention, linear,
#     GroupNorm + SiLU and LayerNorm, ours beside burn's).
#
# The U-Net's weights are made here, as ../shared/oracle/step4_fullsize.py made them (torch seed 0,
# diffusers' default initialisation, saved fp16), from UNET_CONFIG (default: the SD 1.5 U-Net config in
# web/bench/sd15_unet_config.json). The binaries come from CARGO_TARGET_DIR, or UNET_IO_CHECK and
# OP_BENCH where they were built elsewhere. TORCH_DEVICE (default cuda), SIZES, OPS_LATENT (default 64),
# WIDTH_DIVISOR (default 1) and VARIANTS (default burn,tune,conv,ours) exist to try the script on a small model
# without a GPU; PEAK_GFLOPS and PEAK_GBS (default: an H100/H200 SXM's f32 67 TFLOP/s and 4800 GB/s)
# are the roofline's peaks.
#
# On this workplace's lent GPU machine (the device tool; nothing can be fetched there) run it through
# scripts/gpu-run.sh, from what scripts/gpu-prepare.sh makes here (that script prints the call).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s); budget=${BUDGET_S:-3600}
out=$(realpath -m "$1"); config=${2:-web/bench/sd15_unet_config.json}
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-target}
uic=${UNET_IO_CHECK:-$target/release/examples/unet_io_check}
ops=${OP_BENCH:-$target/release/examples/op_bench}
py=${PYTHON:-python3}
latent=${OPS_LATENT:-64}; div=${WIDTH_DIVISOR:-1}
peaks=("${PEAK_GFLOPS:-67000}" "${PEAK_GBS:-4800}")
log=$out/log.txt
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
model=$(mktemp -d)
trap 'rm -rf "$model"' EXIT

# Runs a step with at most CAP seconds, fewer when the budget has less left (10 s kept for the end).
step() {
  local cap=$1 name=$2; shift 2
  local left=$((budget - ($(date +%s) - start) - 10))
  ((left < cap)) && cap=$left
  if ((cap < 20)); then echo "== $name: skipped, ${left}s left" >> "$log"; return 0; fi
  echo "== $name (at most ${cap}s, at $(($(date +%s) - start))s)" >> "$log"
  local t=$(date +%s)
  timeout -k 5 "$cap" "$@"
  echo "== $name: rc $? in $(($(date +%s) - t))s" >> "$log"
}

{ echo "{"; echo "  \"date\": \"$(date -u +%FT%TZ)\","; echo "  \"websd\": \"$(git rev-parse --short HEAD 2>/dev/null || echo "${WEBSD_COMMIT:-unknown}")\","
  echo "  \"gpu\": \"$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)\","
  echo "  \"cpu\": \"$(nproc) cores\""; echo "}"; } > "$out/meta.json"

# The weights, on the CPU while the GPU runs step 1.
"$py" - "$config" "$model/unet" >> "$log" 2>&1 <<'PY' &
import json, sys, torch
from diffusers import UNet2DConditionModel
torch.manual_seed(0)
UNet2DConditionModel.from_config(json.load(open(sys.argv[1]))).half().save_pretrained(sys.argv[2], variant="fp16")
PY
weights=$!

variants=${VARIANTS:-burn,tune}
workgroups=
# The convolution in every tiling; the workgroup target whose picks take the least time over the shapes
# measured, for the hand-made variants.
tilings_f32() {
  step 150 "tilings f32" "$ops" "$latent" wgpu "${peaks[@]}" tilings "$div" > "$out/tilings-f32.txt" 2>> "$log"
  workgroups=$("$py" - "$out/tilings-f32.txt" <<'PY' 2>> "$log"
import re, sys
times, totals = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"(.+), websd's (\d+x\d+/\d+): ([\d.]+) ms", line)
    if m:
        times[(m[1], m[2])] = float(m[3])
    m = re.match(r"(.+?): burn's .* for_workgroups picks (.+)", line)
    if m:
        for pick in m[2].split():
            target, tiling = pick.split(":")
            if (m[1], tiling) in times:
                totals[target] = totals.get(target, 0.0) + times[(m[1], tiling)]
print(min(totals, key=totals.get) if totals else 0)
print(totals, file=sys.stderr)
PY
  )
}
if [[ ",$variants," == *,conv,* || ",$variants," == *,ours,* ]]; then
  tilings_f32
  echo "WEBSD_CONV_WORKGROUPS=$workgroups" >> "$log"
fi
wait $weights

unet() {
  local name=$1; shift
  WEBSD_CONV_WORKGROUPS=$workgroups step 240 "unet $name" "$py" web/bench/native.py "$model" "$uic" 5 "$model" \
    --torch-device "${TORCH_DEVICE:-cuda}" --sizes "${SIZES:-64}" --variants "$variants" "$@" \
    > "$out/unet-$name.json" 2>> "$log"
}
unet f32 --ours wgpu
unet f16 --torch-dtype f16 --ours wgpu-f16
[ -s "$out/tilings-f32.txt" ] || tilings_f32
# op_bench's adapter line goes to stderr, kept in its file.
WEBSD_CONV_WORKGROUPS=$workgroups step 120 "ops f32" "$ops" "$latent" wgpu "${peaks[@]}" all "$div" > "$out/ops-f32.txt" 2>&1
step 120 "tilings f16" "$ops" "$latent" wgpu-f16 "${peaks[@]}" tilings "$div" > "$out/tilings-f16.txt" 2>> "$log"
WEBSD_CONV_WORKGROUPS=$workgroups step 120 "ops f16" "$ops" "$latent" wgpu-f16 "${peaks[@]}" all "$div" > "$out/ops-f16.txt" 2>&1
echo "== done at $(($(date +%s) - start))s" >> "$log"
