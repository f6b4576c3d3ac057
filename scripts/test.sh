#!/usr/bin/env bash
# The README's test command: installs what is missing, starts PostgreSQL and Redis when they do not answer,
# lints (ruff, and mypy on the pure ML packages), and runs every test tier CI runs (unit, real-model, Celery
# workers). Extra arguments go to pytest.
#   scripts/test.sh            # everything
#   scripts/test.sh --fast     # inner loop: skips the real-model tier (the browser tier is part of it)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

fast=0
if [ "${1:-}" = "--fast" ]; then fast=1; shift; fi

export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/distillery}"
# A Redis database of its own, so tests never see a running dev stack's queues.
export REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"

ensure_venv
ensure_postgres
ensure_redis
ensure_chromium
# The fault tier starts Redis instances of its own (on other ports): it needs the binary even when a Redis answers.
command -v redis-server >/dev/null 2>&1 || apt_install redis-server \
  || die "The fault tier needs redis-server (apt-get install redis-server)."
# torch.compile's CPU kernels are C++: the compiled-training tests need a compiler (the image installs g++ too).
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || apt_install g++ \
  || die "The compiled-training tests need a C++ compiler (apt-get install g++)."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Two cores: keep torch from oversubscribing them while Celery test workers run beside pytest.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

say "Lint: ruff check + format --check"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
say "Types: mypy --strict on the pure ML packages (workers/ml, workers/moe)"
# Settings and the checked folders are pyproject.toml's [tool.mypy]; .mypy_cache keeps reruns to seconds.
"$VENV/bin/mypy"

say "Django system checks and migrations"
"$PY" manage.py check --fail-level WARNING
# The check needs no database: on a fresh machine the database does not exist yet (pytest creates test_*).
"$PY" -W "ignore:Got an error checking a consistent migration history:RuntimeWarning" \
  manage.py makemigrations --check --dry-run >/dev/null || die "Models changed without a migration: run manage.py makemigrations."

marker=()
if [ "$fast" = 1 ]; then marker=(-m "not realmodel"); fi
say "pytest ${marker[*]} $*"
exec "$PY" -m pytest "${marker[@]}" "$@"
