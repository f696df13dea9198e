#!/usr/bin/env bash
# Set up (idempotent), then lint and run the whole test suite. `.ci/run` calls exactly this.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
venv="${VIRTUAL_ENV:-$here/.venv}"
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
ruff check .
ruff format --check .
python -m pytest -q "$@"
