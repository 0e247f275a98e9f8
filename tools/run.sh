#!/usr/bin/env bash
# Set up the project's venv once (idempotent), then run: demo | test | bench | <any command>.
#   bash tools/run.sh demo     # torch vs OpenVINO on a small random-weight SD UNet
#   bash tools/run.sh test     # ruff + the pytest suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SD_OV_VENV:-.venv}
PY=${PYTHON:-python3}

# The marker names pyproject.toml's hash: a changed dependency list installs again.
READY="$VENV/.sd_ov_ready-$(sha256sum pyproject.toml | cut -c1-12)"
if [ ! -f "$READY" ]; then
  # -qq: errors only. A newer pip prints setuptools' notes on editable installs (and any warning
  # of the machine's own pip config) at every set-up: nothing a newcomer can act on.
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -qq --upgrade pip
  # The CPU build of torch, pinned: a bare `torch` requirement would pull gigabytes of CUDA wheels.
  "$VENV/bin/python" -m pip install -qq "torch==${SD_OV_TORCH:-2.13.0}"
  # The webui's ldm package (same UNetModel class), without its 2022 pins (lightning 1.4, ...).
  "$VENV/bin/python" -m pip install -qq --no-deps stable-diffusion-sdkit==2.1.5
  # --no-warn-conflicts: pip would list stable-diffusion-sdkit's 2022 pins, installed without on
  # purpose above, as "not installed" at every set-up: noise a newcomer cannot act on.
  "$VENV/bin/python" -m pip install -qq --no-warn-conflicts -e ".[ldm,test,genai]"
  rm -f "$VENV"/.sd_ov_ready*
  touch "$READY"
fi
. "$VENV/bin/activate"

case "${1:-test}" in
  demo) shift; exec python -m sd_ov demo "$@" ;;
  # Two workers: much of a test is single-threaded tracing and NNCF's Python, so two processes
  # overlap on 2 cores (10:50 → 9:12 for the same suite, AMD EPYC 2 cores, 2026-12-01).
  test) shift; ruff check . && ruff format --check . && exec python -m pytest -q -n "${SD_OV_TEST_WORKERS:-2}" --dist worksteal "$@" ;;
  bench) shift; exec python bench/unet_step.py "$@" ;;
  *) exec "$@" ;;
esac
