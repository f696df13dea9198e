#!/usr/bin/env bash
# Set up (idempotent), then lint and run the whole test suite. `.ci/run` calls exactly this.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check .
ruff format --check .
python -m pytest -q "$@"
