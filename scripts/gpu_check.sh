#!/usr/bin/env bash
# Run first on any machine lent a GPU: the CUDA tests, then the paper-size benches on it (~8 min on an H100).
# Each section prints its header and exit code; the script fails at the end if any section failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
failed=()

section() {  # section NAME COMMAND...: run it, print its exit code, remember a failure
  local name="$1"
  shift
  echo "===== $name: $*"
  local t0=$SECONDS
  "$@"
  local rc=$?
  echo "===== $name: exit $rc ($((SECONDS - t0)) s)"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())" \
  || { echo "gpu_check: no CUDA GPU visible to torch"; exit 1; }
# -rs: a skipped CUDA test on a GPU machine says why
section "cuda tests" python -m pytest -m cuda -q -rs -p no:cacheprovider tests
# paper shapes on meta + reader rates; a small tiny epoch
section "paper_scale" python bench/paper_scale.py --rows 16 --tiny-videos 8
section "bench_extract paper" python bench/bench_extract.py --preset paper --random-weights --device cuda \
  --videos 2 --repeats 1

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${failed[*]}"
  exit 1
fi
echo "gpu_check: all sections passed"
