#!/usr/bin/env bash
# Create .venv and install ptq-hub into it. Usage: scripts/setup.sh [extras]
#   extras: "" (core), "test" (everything the test suite needs), "space"
# On a machine without an NVIDIA GPU the CPU build of torch is installed first,
# so pip never pulls the multi-GB CUDA wheels; with a GPU, pip's normal torch is used.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    # The CPU build: a local wheel or mirror when the machine has one (torch==2.13.0+cpu),
    # else PyTorch's own CPU index. Never the default index, whose Linux wheels are CUDA builds.
    python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
if [ -n "$extras" ]; then
  python -m pip install -q -e ".[$extras]"
else
  python -m pip install -q -e .
fi
