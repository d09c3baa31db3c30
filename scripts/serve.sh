#!/usr/bin/env bash
# Builds the app (trunk build --release) and serves dist/ on http://127.0.0.1:8080, with the local
# model folders (tests/fixtures) beside it under /models/. Pass --models DIR to serve another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
trunk build --release
models=tests/fixtures
[ "${1:-}" = "--models" ] && models=$2
exec npm --prefix web run --silent serve -- --root ../dist --models "$(realpath "$models")" --port "${PORT:-8080}"
