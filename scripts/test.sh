#!/usr/bin/env bash
# Set up if needed, then run the test suite: scripts/test.sh [pytest arguments], e.g. scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
