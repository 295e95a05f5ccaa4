#!/usr/bin/env bash
# Set up, then run the main job offline on the embedded demo (see scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py
