#!/usr/bin/env bash
# Set up this checkout on a fresh machine and start the worker's local API server, in one command:
# installs requirements.txt, downloads the checkpoints unless they are present, then serves
# /run, /runsync and /status (RunPod's local test server) on 127.0.0.1:8000.
#
#   scripts/serve_local.sh                      # SeedVR2-3B
#   scripts/serve_local.sh --model 7b-sharp --port 8001
#   scripts/serve_local.sh --model all --host 0.0.0.0   # reachable from other machines: no auth!
#
# Then: python scripts/client.py input.mp4 --url http://127.0.0.1:8000 --res-h 1280 --res-w 720
#
# Environment: SEEDVR_CKPT_DIR (checkpoint folder, default ./ckpts), VENV (virtual environment to
# create and use, default .venv; VENV=none installs into the current Python), PYTHON (default python3),
# SEEDVR_SKIP_INSTALL=1 (no pip), plus the worker's own variables (docs/API.md).
set -euo pipefail
cd "$(dirname "$0")/.."

model=3b
host=127.0.0.1
port=8000
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$model" in
  3b) default_model=seedvr2_3b; dit_key=seedvr2_3b ;;
  all) default_model=seedvr2_3b; dit_key=all ;;
  7b) default_model=seedvr2_7b; dit_key=seedvr2_7b ;;
  7b-sharp) default_model=seedvr2_7b; dit_key=seedvr2_7b_sharp ;;
  *) echo "--model must be 3b, 7b, 7b-sharp or all, got $model" >&2; exit 2 ;;
esac

python="${PYTHON:-python3}"
venv="${VENV:-.venv}"
if [ "$venv" != none ]; then
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  python="$venv/bin/python"
fi

if [ "${SEEDVR_SKIP_INSTALL:-0}" != 1 ]; then
  # A stamp of requirements.txt keeps a re-run from asking pip again.
  stamp="$("$python" -c 'import sys; print(sys.prefix)')/.seedvr-requirements"
  if ! cmp -s requirements.txt "$stamp" 2>/dev/null; then
    "$python" -m pip install --upgrade pip
    "$python" -m pip install -r requirements.txt
    cp requirements.txt "$stamp"
  fi
fi

export SEEDVR_CKPT_DIR="${SEEDVR_CKPT_DIR:-ckpts}"
export SEEDVR_MODEL="${SEEDVR_MODEL:-$default_model}"
missing="$("$python" - "$dit_key" <<'EOF'
import sys
from seedvr.checkpoints import CHECKPOINT_FILES, SHARED_FILES, default_ckpt_dir

models = ("seedvr2_3b", "seedvr2_7b", "seedvr2_7b_sharp") if sys.argv[1] == "all" else (sys.argv[1],)
print(" ".join(CHECKPOINT_FILES[k] for k in (*models, *SHARED_FILES) if not (default_ckpt_dir() / CHECKPOINT_FILES[k]).is_file()))
EOF
)"
if [ -n "$missing" ]; then
  echo "missing in $SEEDVR_CKPT_DIR: $missing; downloading $model" >&2
  "$python" scripts/download_models.py --model "$model" --dir "$SEEDVR_CKPT_DIR"
fi

echo "worker: http://$host:$port (model $SEEDVR_MODEL, checkpoints in $SEEDVR_CKPT_DIR)" >&2
exec "$python" handler.py --rp_serve_api --rp_api_host "$host" --rp_api_port "$port"
