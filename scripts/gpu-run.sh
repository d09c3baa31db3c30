#!/usr/bin/env bash
# On the lent GPU machine: unpacks what scripts/gpu-prepare.sh carried (`.gl`, `.whl`, `.gpu`) and runs
# scripts/bench-gpu.sh into $OUT (or the folder given), its budget a minute under the call's 600 s.
#
#   bash scripts/gpu-run.sh [OUT_DIR [UNET_CONFIG]]   (UNET_CONFIG: bench-gpu.sh's)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:?no OUT_DIR given and no \$OUT}}
# The loader only where the image has none (unpacked into / as the device tool's README says). grep
# reads all its input (no -q): under pipefail a closed pipe would fail the test.
if ! ldconfig -p | grep 'libvulkan\.so\.1' > /dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ] && ! ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null | grep nvidia > /dev/null; then
  export VK_DRIVER_FILES=$icd
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p /tmp/bin && xz -dc .gpu/bins.tar.xz | tar -x -C /tmp/bin || exit
WEBSD_COMMIT=$(cat .gpu/commit) BUDGET_S=${BUDGET_S:-540} UNET_IO_CHECK=/tmp/bin/unet_io_check \
  OP_BENCH=/tmp/bin/op_bench bash scripts/bench-gpu.sh "$out" "${@:2}"
