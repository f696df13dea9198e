#!/usr/bin/env bash
# Set up (idempotent), then run the pipeline on the embedded default: a synthetic AVSBench tree.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
venv="${VIRTUAL_ENV:-$here/.venv}"
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
out="${AV2T_DEMO_DIR:-$here/runs/demo}"
mkdir -p "$out"
for subset in s4 ms3; do
  av2t synth --out "$out/data" --subset "$subset" --videos 24 --seed 0
  av2t data check --root "$out/data" --subset "$subset"
done
echo "synthetic AVSBench tree: $out/data"
