#!/usr/bin/env bash
# Set up (idempotent), then run the main job on the embedded default: synthetic S4 and MS3 ->
# extract-features -> train-head -> evaluate (tiny preset), and print the M_J / M_F table.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
venv="${VIRTUAL_ENV:-$here/.venv}"
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="${PREFECT_HOME:-$here/.prefect}" PREFECT_LOGGING_LEVEL="${PREFECT_LOGGING_LEVEL:-WARNING}"
exec av2t demo --out "${AV2T_DEMO_DIR:-$here/runs/demo}"
