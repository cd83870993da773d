#!/usr/bin/env bash
# Install what dery_deploy needs into the current Python environment; quick when already done.
#  - Fashion-MNIST from Debian (dataset-fashion-mnist) unless the IDX files are already there
#  - torch + torchvision (a matching pair: PyPI's torchvision does not import beside a CPU-only torch)
#  - the package itself, editable, with the test extra (`[dev]`, which pulls `[train]`: torch, timm, ...;
#    a machine that only runs shipped packages needs the base install: `pip install dery-deploy`)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
PY=$PYTHON
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=sudo

if [ -z "${DERY_DATA:-}" ] && ! ls /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if ! $PY -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing torch 2.14.1 + torchvision 0.29.1"
  $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi

# reinstall when pyproject.toml changed since the last install here, or the package does not import
stamp=".setup-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $($PY -c 'import sys; print(sys.executable)')"
here=$PWD
# imported from outside the tree, so that an editable install of another checkout does not pass for this one
installed() { (cd / && "$PY" -c "import sys, dery_deploy, pytest; sys.exit(dery_deploy.__file__ != '$here/dery_deploy/__init__.py')") >/dev/null 2>&1; }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! installed; then
  echo "setup: installing dery_deploy (pip install -e .[dev])"
  $PY -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
