#!/usr/bin/env bash
# Set up, then run lint, type checks and the whole test suite (real appliance, qemu-img, gpgv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
exec .venv/bin/pytest -q -ra "$@"
