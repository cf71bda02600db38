#!/usr/bin/env bash
# Set up if needed, then train: scripts/train.sh [Hydra overrides], e.g. scripts/train.sh model=mlp
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m task1.train "$@"
