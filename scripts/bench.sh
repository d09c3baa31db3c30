#!/usr/bin/env bash
# The benchmark (not part of CI): builds the app, installs onnxruntime-web for the benchmark only
# (web/bench), and writes BENCHMARKS.md + web/bench/results.json. Pass --reps N, --only
# unet,image,memory,native,gpu (a section not run keeps its last figures), --sd15 DIR (default SD15_DIR:
# the full-size SD1.5-shaped model of ../shared/oracle/step4_fullsize.py, for memory and native), --gpu DIR
# (what scripts/bench-gpu.sh wrote on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
if [ "${SKIP_BUILD:-}" != 1 ]; then
  trunk build --release
  # The native section's side: one U-Net call per stdin line on the Flex CPU device.
  cargo build --release -p websd --example unet_io_check
fi
npm --prefix web/bench ci --silent
# The larger, SD 1.5-shaped U-Net and its ONNX export come from torch (the oracle venv of
# ../shared/oracle, ORACLE_PY); without it only the tiny U-Net is measured.
py=${ORACLE_PY:-/tmp/sd-oracle/venv/bin/python}
if [ -x "$py" ] && [ ! -f web/bench/build/sd-shaped/unet.onnx ]; then
  "$py" web/bench/make_sd_shaped.py tests/fixtures/tiny-sd tests/fixtures/onnx web/bench/build/sd-shaped
fi
cd web && exec npx tsx bench/run.ts "$@"
