#!/usr/bin/env bash
# Set up (idempotent), then run the main job on the embedded default: synthetic S4 and MS3 ->
# extract-features -> train-head -> evaluate (tiny preset), and print the M_J / M_F table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export PREFECT_HOME="${PREFECT_HOME:-$here/.prefect}" PREFECT_LOGGING_LEVEL="${PREFECT_LOGGING_LEVEL:-WARNING}"
exec av2t demo --out "${AV2T_DEMO_DIR:-$here/runs/demo}" "$@"
