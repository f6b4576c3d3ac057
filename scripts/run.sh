#!/usr/bin/env bash
# The README's run command: installs what is missing, starts Redis, picks PostgreSQL when one answers (else
# an embedded SQLite file in WAL mode), migrates, prepares the packaged models, creates the demo login, and runs
# the web server, a worker per queue and beat under honcho. Ctrl-C stops everything.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_venv
ensure_redis

export DATA_DIR="${DATA_DIR:-$REPO_ROOT/var}"
mkdir -p "$DATA_DIR"
# Keeps a DATABASE_URL you set (creating its PostgreSQL database if missing), else picks PostgreSQL or SQLite.
DATABASE_URL="$("$PY" scripts/choose_database.py)"
export DATABASE_URL
say "Database: ${DATABASE_URL%%\?*}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export PATH="$VENV/bin:$PATH"
export MODEL_CACHE_DIR="${MODEL_CACHE_DIR:-$DATA_DIR/models}"
# The web process finds the engine the Procfile starts on INFERENCE_PORT.
export INFERENCE_URL="${INFERENCE_URL:-http://127.0.0.1:${INFERENCE_PORT:-8700}}"

"$PY" manage.py migrate --noinput
say "Preparing the packaged models (converted once, then cached): SmolLM2-135M-Instruct, then Gemma-3-270M"
"$PY" -m workers.ml.catalog prepare packaged:smollm2-135m-instruct --cache-dir "$MODEL_CACHE_DIR"
# The larger teacher (~80 s once on 2 cores); the product runs without it, so a failure is only reported.
"$PY" -m workers.ml.catalog prepare packaged:gemma3-270m --cache-dir "$MODEL_CACHE_DIR" \
  || say "Gemma-3-270M could not be prepared (see above); a job that picks it tries again."
"$PY" manage.py ensure_demo_user

say "Starting web (http://${DISTILLERY_HOST:-127.0.0.1}:${DISTILLERY_PORT:-8000}), workers (cpu, gpu, ops), beat and the inference engine (127.0.0.1:${INFERENCE_PORT:-8700})"
exec "$VENV/bin/honcho" start -f Procfile
