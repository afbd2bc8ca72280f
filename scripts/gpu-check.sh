#!/usr/bin/env bash
# The GPU check, one command: CUDA tests, tiny Llama / Qwen3-MoE quantized to FP8_BLOCK, NVFP4A16
# and W4A16 and served with vLLM against the bf16 original, CPU vs GPU quantize timing. Prints one
# markdown table at the end (also $OUT/gpu-check.md when OUT is set). Works offline: what it cannot
# run is a SKIPPED row with the reason. Exit status: 0 when no row failed.
#
#   scripts/gpu-check.sh [gpu_check.py run options]   e.g. --skip timing, --arch llama, --jobs 2
#   scripts/gpu-check.sh --wheels                     (online machine) fill .whl/ with what an
#                                                     offline GPU machine lacks, to carry with the tree
#
# Python: $PYTHON if set; else python3 when its torch is a CUDA build (ptq-hub is then pip-installed
# into it, its torch pinned so pip can never swap it); else .venv (scripts/setup.sh test makes it).
# Offline installs take wheels from .whl/ (pip --no-index --find-links .whl).
# vLLM: $VLLM_PYTHON, else whichever Python above imports vllm, else $WORK/vllm-venv from an
# earlier run, else it is installed into $WORK/vllm-venv (its own venv: vLLM pins its own torch and
# compressed-tensors) from .whl/ or a reachable package index, else the vLLM rows are SKIPPED.
# Env: GPU_CHECK_WORK (default /tmp/ptq-gpu-check), GPU_CHECK_BUDGET (540 s in all),
# GPU_CHECK_INSTALL_VLLM=0 (never install), VLLM_INSTALL_TIMEOUT (900 s), GPU_CHECK_JOBS (4 engines).
set -uo pipefail   # no -e: a failed step is a row in the table, not the end of the run

WHEEL_PY=${WHEEL_PY:-3.12}   # the GPU image's Python (KINDS.md: python3 is 3.12 there)

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
# the vLLM release ptq-hub's outputs are checked against: tools/vllm-version.txt is the one pin
VLLM_VERSION=$(grep -v '^#' tools/vllm-version.txt | head -n 1 | tr -d '[:space:]' | sed 's/^vllm==//')
GPU_CHECK_T0=$(date +%s)
export GPU_CHECK_T0
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/ptq-gpu-check}
mkdir -p "$WORK"
ROWS=$WORK/setup-rows.tsv
: >"$ROWS"
LOG=$WORK/setup.log
: >"$LOG"

say() { echo "[gpu-check] $*"; }
row() {  # check result numbers seconds
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "${3//$'\t'/ }" "$4" >>"$ROWS"
  say "$2 $1: $3"
}
since() { echo $(($(date +%s) - $1)); }
last_line() { grep -E 'ERROR|Error|error' "$1" | tail -n 1 | cut -c1-160 || true; }

# --------------------------------------------------------------------------- --wheels
if [ "${1:-}" = "--wheels" ]; then
  # Everything ptq-hub needs that the GPU image lacks (its torch, transformers, safetensors,
  # huggingface_hub, pyyaml, regex and tqdm are there): compressed-tensors and its pure-Python
  # needs, for CPython $WHEEL_PY on x86-64 Linux. Versions from .venv when there, so the set is
  # the one the suite passes with. A few MB; vLLM (336 MB wheel, plus torch) cannot travel.
  PY=${PYTHON:-.venv/bin/python}
  [ -x "$PY" ] || PY=python3
  spec() { "$PY" -c "import importlib.metadata as m; print('$1==' + m.version('$1'))" 2>/dev/null || echo "$1"; }
  mkdir -p .whl
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  set -e
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PY" "${plat[@]}" \
    -d .whl "$(spec compressed-tensors)" "$(spec loguru)"
  "$PY" -m pip download -q --only-binary=:all: --python-version "$WHEEL_PY" "${plat[@]}" \
    -d .whl "$(spec pydantic)" "setuptools>=68"   # setuptools: pip's isolated build of ptq-hub
  ls -l .whl
  echo "carry .whl with the tree (device run: carry [\".whl\"]); it is git-ignored"
  exit 0
fi

# --------------------------------------------------------------------------- Python for ptq-hub
cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1; }
# The checks always run this checkout's code (PYTHONPATH=$ROOT, `python -m ptq_core.cli` for `ptq`),
# whatever ptq-hub an environment has installed; an install is only needed for the dependencies.
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
has_ptq() { (cd / && "$1" -c 'import ptq_core, compressed_tensors, transformers') >/dev/null 2>&1; }

t=$(date +%s)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON; how="\$PYTHON"
elif cuda_torch python3; then
  PY=$(command -v python3); how="python3 (CUDA torch)"
elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  PY=$ROOT/.venv/bin/python; how=".venv"
else
  say "no CUDA torch in python3 and no .venv: scripts/setup.sh test"
  if scripts/setup.sh test >>"$LOG" 2>&1; then
    PY=$ROOT/.venv/bin/python; how=".venv (made by scripts/setup.sh test)"
  else
    PY=$(command -v python3); how="python3"
    row "setup: ptq-hub" FAIL "scripts/setup.sh test failed: $(last_line "$LOG")" "$(since "$t")"
  fi
fi
if has_ptq "$PY"; then
  row "setup: ptq-hub" PASS "dependencies already in $how ($PY); this checkout on PYTHONPATH" "$(since "$t")"
elif ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  grep -q '^setup: ptq-hub' "$ROWS" || row "setup: ptq-hub" FAIL "no torch in $PY" "$(since "$t")"
else
  # pin the torch that is there: pip may add packages around it, never replace it
  "$PY" -c 'import torch; print("torch==" + torch.__version__)' >"$WORK/constraints.txt"
  installed=""
  offline=(timeout 300 "$PY" -m pip install -q --no-index --find-links .whl -c "$WORK/constraints.txt" -e .)
  if [ -d .whl ] && "${offline[@]}" >>"$LOG" 2>&1; then
    installed="from .whl/ (offline)"
  elif [ -d .whl ] && "${offline[@]}" --no-build-isolation >>"$LOG" 2>&1; then
    installed="from .whl/ (offline, built with the environment's setuptools)"
  elif PIP_DEFAULT_TIMEOUT=10 timeout 300 "$PY" -m pip install -q --retries 1 -c "$WORK/constraints.txt" -e . >>"$LOG" 2>&1; then
    installed="from the package index"
  fi
  if [ -n "$installed" ] && has_ptq "$PY"; then
    row "setup: ptq-hub" PASS "pip install -e . into $how ($PY), $installed; torch $(cut -d= -f3 "$WORK/constraints.txt") kept" "$(since "$t")"
  else
    row "setup: ptq-hub" FAIL "pip install -e . failed (offline? run scripts/gpu-check.sh --wheels where pip works, carry .whl): $(last_line "$LOG")" "$(since "$t")"
  fi
fi

# --------------------------------------------------------------------------- vLLM
t=$(date +%s)
VLLM_PY=""
skip=""
why=""
has_vllm() { "$1" -c 'import vllm' >/dev/null 2>&1; }
vllm_version() { "$1" -c 'import vllm; print(vllm.__version__)' 2>/dev/null; }
index_reachable() {  # the index pip would use answers for vllm within 5 s
  python3 - "${PIP_INDEX_URL:-https://pypi.org/simple}" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/vllm/", timeout=5).read(1)
EOF
}
have_gpu=0
nvidia-smi -L >/dev/null 2>&1 && have_gpu=1

if [ -n "${VLLM_PYTHON:-}" ]; then
  if has_vllm "$VLLM_PYTHON"; then VLLM_PY=$VLLM_PYTHON; else skip="\$VLLM_PYTHON ($VLLM_PYTHON) cannot import vllm"; fi
elif has_vllm "$PY"; then
  VLLM_PY=$PY
elif has_vllm python3; then
  VLLM_PY=$(command -v python3)
elif [ -x "$WORK/vllm-venv/bin/python" ] && has_vllm "$WORK/vllm-venv/bin/python"; then
  VLLM_PY=$WORK/vllm-venv/bin/python
elif [ "$have_gpu" = 0 ]; then
  skip="vllm is not installed, and there is no NVIDIA GPU (nvidia-smi) to install it for"
elif [ "${GPU_CHECK_INSTALL_VLLM:-1}" = 0 ]; then
  skip="vllm is not installed (GPU_CHECK_INSTALL_VLLM=0)"
else
  from=""
  if compgen -G ".whl/vllm-$VLLM_VERSION-*.whl" >/dev/null; then
    src=(--no-index --find-links .whl); from=".whl/"
  elif index_reachable; then
    src=(); [ -d .whl ] && src=(--find-links .whl); from="the package index"
  fi
  if [ -z "$from" ]; then
    skip="vllm is not installed and cannot be (offline, no wheel in .whl/)"
    why="vllm is not installed; .whl/ has no vllm-$VLLM_VERSION wheel and no package index answers (offline): vLLM's 336 MB wheel and its torch cannot travel in a 64 MiB carry"
  else
    say "installing vllm==$VLLM_VERSION into $WORK/vllm-venv from $from (timeout ${VLLM_INSTALL_TIMEOUT:-900} s)"
    if python3 -m venv "$WORK/vllm-venv" >>"$LOG" 2>&1 &&
      timeout "${VLLM_INSTALL_TIMEOUT:-900}" "$WORK/vllm-venv/bin/python" -m pip install -q "${src[@]}" \
        "vllm==$VLLM_VERSION" >>"$LOG" 2>&1 && has_vllm "$WORK/vllm-venv/bin/python"; then
      VLLM_PY=$WORK/vllm-venv/bin/python
      row "setup: vLLM" PASS "installed vllm $VLLM_VERSION into $WORK/vllm-venv from $from" "$(since "$t")"
    else
      row "setup: vLLM" FAIL "pip install vllm==$VLLM_VERSION from $from failed: $(last_line "$LOG")" "$(since "$t")"
      skip="vllm install failed (see the setup: vLLM row)"
    fi
  fi
fi
if [ -n "$VLLM_PY" ]; then
  if ! grep -q '^setup: vLLM' "$ROWS"; then
    v=$(vllm_version "$VLLM_PY")
    note=""
    [ "$v" = "$VLLM_VERSION" ] || note=" (the pin is $VLLM_VERSION)"
    row "setup: vLLM" PASS "vllm $v in $VLLM_PY$note" "$(since "$t")"
  fi
elif ! grep -q '^setup: vLLM' "$ROWS"; then
  row "setup: vLLM" SKIPPED "${why:-$skip}" "$(since "$t")"
fi

# --------------------------------------------------------------------------- the checks
args=(run --work "$WORK" --setup-rows "$ROWS")
[ -n "${OUT:-}" ] && args+=(--out "$OUT")
if [ -n "$VLLM_PY" ]; then args+=(--vllm-python "$VLLM_PY"); else args+=(--vllm-skip "$skip"); fi
[ -n "${OUT:-}" ] && [ -s "$LOG" ] && mkdir -p "$OUT" && tail -n 200 "$LOG" >"$OUT/gpu-check-setup.log"
PYTHONUNBUFFERED=1 exec "$PY" scripts/gpu_check.py "${args[@]}" "$@"
