#!/usr/bin/env bash
# Install av2t and its stack into the active virtualenv, or into ./.venv when none is active.
# Idempotent: a stamp keyed on this script and pyproject.toml skips work already done.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ -n "${VIRTUAL_ENV:-}" ]; then
  venv="$VIRTUAL_ENV"
else
  venv="$here/.venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
fi
py="$venv/bin/python"

stamp="$venv/.av2t-setup-$(cat scripts/setup.sh pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi

log="$venv/.av2t-setup.log"
: >"$log"
# Quiet where it works: pip's output goes to the log; a failing step prints the log and stops.
pip() {
  if ! "$py" -m pip "$@" >>"$log" 2>&1; then
    cat "$log" >&2
    echo "av2t setup: 'pip $*' failed (full log above, also in $log)" >&2
    exit 1
  fi
}
echo "av2t setup: installing the stack into $venv (about a minute with a warm pip cache; log: $log)" >&2
# Every step is constrained to the CPU torch, also inside isolated build environments:
# an unconstrained resolve pulls a CUDA torch and several GB of nvidia wheels.
export PIP_CONSTRAINT="$here/constraints.txt"
pip install -q --upgrade pip wheel setuptools
pip install -q "torch==2.13.0"
# Stale pins: laion-clap 1.1.7 pins numpy<2 (runs on 2.x), torchscale pins an old timm/fairscale,
# msclap 1.3.4 pins numpy<2, transformers<5, librosa<0.11 and torchaudio (no build exists for our torch).
# msclap's model code (msclap.models: HTSAT + projections) needs only torch, torchlibrosa, transformers and
# numpy, all project dependencies; torchaudio is used only by its CLAPWrapper, which av2t never imports.
pip install -q --no-deps "laion-clap==1.1.7" "msclap==1.3.4" "torchscale==0.3.0" "fairscale==0.4.13"
# sam2 compiles an optional CUDA extension unless told not to; build against the torch we have.
SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation "sam2==1.1.0"
pip install -q -e ".[dev]"
# The page's browser test drives Debian's chromium (Playwright's own browser download needs the internet):
# installed here when missing and we may (root, apt-get); otherwise that test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "av2t setup: installing chromium with apt-get (for the page's browser test)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >>"$log" 2>&1; then
      echo "av2t setup: warning: chromium could not be installed (log: $log); the browser test will skip" >&2
    fi
  else
    echo "av2t setup: note: no chromium and not root: the browser test will skip (apt-get install chromium)" >&2
  fi
fi
touch "$stamp"
# pip's resolver reports the stale pins installed around above as "ERROR: ... incompatible": expected.
echo "av2t setup: done; laion-clap, msclap and torchscale are installed without their stale pins on purpose" \
  "(docs/install.md says why), so 'pip check' lists them" >&2
