#!/usr/bin/env bash
# One command for the main job on a fresh machine: set up, then quantize the
# embedded tiny Llama-shaped checkpoint (no Hub, no token) and print the plan
# table and the result. Extra arguments go to `ptq demo` (e.g. --scheme NVFP4A16).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ptq demo "$@"
