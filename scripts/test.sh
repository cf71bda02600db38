#!/usr/bin/env bash
# Set up if needed, then run the test suite on two workers: scripts/test.sh [pytest arguments], e.g.
# scripts/test.sh -m "not slow" (the quick tier), scripts/test.sh -n 0 (one process). A file's tests share one
# worker (--dist loadfile): the cluster's tests run one at a time, as the one test cluster needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n "${TASK1_TEST_WORKERS:-2}" --dist loadfile "$@"
