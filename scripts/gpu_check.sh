#!/usr/bin/env bash
# Everything the models do on one GPU, in one command, in under 8 minutes on an H100/H200: writes
# gpu_check.json and gpu_check.md into the folder given (default: $OUT when set, else gpu_check_out).
# Needs only Python with torch (CUDA), numpy, safetensors and pyyaml; see scripts/gpu_check.py.
#   scripts/gpu_check.sh [OUT_DIR] [gpu_check.py options, e.g. --budget 300]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
shift || true
PYTHONUNBUFFERED=1 timeout 470 python3 scripts/gpu_check.py --out "$out" "$@"
