#!/usr/bin/env bash
# Read compressed-tensors checkpoints with vLLM's own code, without a GPU.
#
#   scripts/vllm-check.sh OUT_DIR [OUT_DIR ...] [--json report.json] [--capability 90]
#   scripts/vllm-check.sh            (no argument: only make / update the side venv)
#
# vLLM is never a dependency of ptq-hub: it lives in a side venv, $PTQ_VLLM_VENV (default
# ~/.cache/ptq-hub/vllm-venv, outside the checkout so every clone on a machine, CI's too,
# shares one), made here with the version pinned in tools/vllm-version.txt (the one place
# that names it; change it there and rerun). pip pulls vLLM's CUDA build of torch and
# the NVIDIA wheels: with vllm==0.33.0 on Python 3.11 the venv is 9.5 GB and pip's install
# took 4 min 7 s (2 cores busy with other work) and 2 min 9 s (idle) on the 2-core dev machine;
# pip kept no cache there, so both downloaded every wheel. No GPU and no NVIDIA driver are needed: tools/vllm_check.py builds
# a stub libcuda.so.1 (needs cc, readelf, nm) so that vLLM's extension modules import.
#
# tools/vllm_check.py then, for each checkpoint folder and capability 9.0 and 10.0, builds
# vLLM's CompressedTensorsConfig, records the scheme (and kernel) vLLM picks for every
# layer, builds the model on the meta device, runs its load_weights over the checkpoint's
# tensors, prints one table per checkpoint and exits 1 on any failure (see its docstring
# and docs/loaders.md). Exit 2: the check itself could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
spec="$(grep -v '^#' tools/vllm-version.txt | head -n 1 | tr -d '[:space:]')"
venv="${PTQ_VLLM_VENV:-$HOME/.cache/ptq-hub/vllm-venv}"
marker="$venv/.installed"
if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "$spec" ]; then
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  start=$(date +%s)
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$spec"
  echo "$spec" > "$marker"
  echo "installed $spec into $venv in $(( $(date +%s) - start )) s ($(du -sh "$venv" | cut -f1))" >&2
fi
if [ "$#" -eq 0 ]; then
  exit 0
fi
exec "$venv/bin/python" tools/vllm_check.py "$@"
