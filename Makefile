# `make demo` runs the closed loop; `make test` runs the test suite. Both install what they need.
.PHONY: setup demo test lint bench

setup:
	@bash scripts/bootstrap.sh

demo: setup
	.venv/bin/rlhf demo

test: setup
	.venv/bin/python -m pytest -q

# The gate CI and pre-commit run: lint, formatting, types (configured in pyproject.toml). mypy's cache
# sits beside the venv's, so a fresh clone checks only what changed.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	MYPY_CACHE_DIR=$${XDG_CACHE_HOME:-$$HOME/.cache}/rlhf-stream/mypy .venv/bin/mypy

# Runs every benchmark and rewrites docs/benchmarks.md with their output, the date and the machine
# (bench/__main__.py; replay_round is left out: it measures a finished demo run).
bench: setup
	.venv/bin/python -m bench
