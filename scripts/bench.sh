#!/usr/bin/env bash
# The side-by-side benchmark (not part of CI): builds the app, installs onnxruntime-web for the
# benchmark only (web/bench), and writes BENCHMARKS.md + web/bench/results.json. Pass --reps N.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
[ "${SKIP_BUILD:-}" = 1 ] || trunk build --release
npm --prefix web/bench ci --silent
cd web && exec npx tsx bench/run.ts "$@"
