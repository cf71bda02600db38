#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with task1 and its dependencies, and the Fashion-MNIST
# files in <data folder>/FashionMNIST/raw when a local copy exists (the data folder: $TASK1_DATA_DIR, else data,
# as paths.data_dir has it). Quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# reinstall only when the dependencies changed
stamp=.venv/.task1-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing task1 and its dependencies into .venv (first time: a few minutes)" >&2
  # (the grep drops pip's notes about package folders this machine's pip config names but lacks)
  .venv/bin/python -m pip install --quiet -e '.[dev,sweeps,mlflow,notebook]' 2> >(grep -v 'is ignored: it is neither a file' >&2)
  echo "$want" > "$stamp"
fi
# hydra-optuna-sweeper's wheel, for the test that installs it beside task1 (--no-deps: it pins optuna<3)
if ! ls .venv/wheels/hydra_optuna_sweeper-*.whl >/dev/null 2>&1; then
  .venv/bin/python -m pip download --quiet --no-deps --dest .venv/wheels 'hydra-optuna-sweeper>=1.2,<2' \
    2> >(grep -v 'is ignored: it is neither a file' >&2) || echo "setup: could not download hydra-optuna-sweeper" >&2
fi

# Fashion-MNIST: copy a local copy of the four files if one is beside the checkout (TASK1_DATA_SRC to choose
# another folder); otherwise `data.download=true` (the default) fetches them on the first run.
raw=${TASK1_DATA_DIR:-data}/FashionMNIST/raw
src=${TASK1_DATA_SRC:-../shared/data/fashion-mnist}
if [ -d "$src" ]; then
  mkdir -p "$raw"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ ! -f "$raw/$f.gz" ] && [ ! -f "$raw/$f" ] && [ -f "$src/$f.gz" ]; then
      cp "$src/$f.gz" "$raw/"
      chmod u+w "$raw/$f.gz"
    fi
  done
fi
