#!/usr/bin/env bash
# Set up, then lint, type-check and run the whole test suite (CPU only; minutes on 2 cores).
# A local PostgreSQL is started for the multi-worker store tests (scripts/postgres.sh), and
# Debian's docker-compose is installed to validate compose.yaml (scripts/compose-tool.sh), and
# Debian's chromium for the dashboard's browser tests (scripts/chromium.sh).
# Last, the compose stage (scripts/compose-stage.sh) builds the image and runs the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if pg_env="$(bash scripts/postgres.sh | tail -1)"; then
  eval "$pg_env"
else
  echo "warning: no PostgreSQL (scripts/postgres.sh failed); its tests skip here, and fail under CI" >&2
fi
bash scripts/chromium.sh ||
  echo "warning: no Chromium (scripts/chromium.sh failed); the dashboard's browser tests skip here, and fail under CI" >&2
bash scripts/compose-tool.sh ||
  echo "warning: no docker-compose; the compose tests skip here, and fail under CI" >&2
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
# Two processes (pytest-xdist) for CI's 2 cores: the suite's many waits (workers, leases,
# servers starting) overlap with the other's training; each gets its share of the cores
# (tests/conftest.py). Work-stealing evens out the long tests; `-n 0` runs it in one process.
echo "== pytest"; pytest_rc=0
.venv/bin/python -m pytest -n 2 --dist worksteal "$@" || pytest_rc=$?
# The image built and the whole loop run in containers (docker-compose --profile cpu up);
# skips where no Docker engine can run, fails under CI. Its pytest prints its own closing line.
echo "== compose stage"; compose_rc=0; bash scripts/compose-stage.sh -q || compose_rc=$?
echo "== pytest exit $pytest_rc, compose stage exit $compose_rc"
[ "$pytest_rc" = 0 ] && [ "$compose_rc" = 0 ]
