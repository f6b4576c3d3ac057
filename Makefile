# Shortcuts; the README's two commands are scripts/run.sh and scripts/test.sh.
.PHONY: run test test-fast lint format
run:
	scripts/run.sh
test:
	scripts/test.sh
test-fast:
	scripts/test.sh --fast
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
format:
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .
