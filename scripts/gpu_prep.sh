#!/usr/bin/env bash
# Fill the git-ignored .whl/ with what the GPU machine lacks, before `scripts/gpu_check.sh` runs there.
#
# Run here, in the project root, on a machine with network access:   bash scripts/gpu_prep.sh
# then carry ".whl" with the tree:   run(command="bash scripts/gpu_check.sh", carry=[".whl"])
# `bash scripts/gpu_prep.sh --check` only re-checks what .whl/ holds (size and data), without downloading.
#
# The GPU image (Python 3.12, x86_64, no network) has torch, torchvision, timm, onnx, onnxscript,
# onnxruntime, nvidia-ml-py, rich, typer, safetensors, pyyaml, matplotlib, markdown, pytest (and what
# they pull in: numpy, packaging, typing_extensions, tqdm, MarkupSafe, and matplotlib's python-dateutil
# and six). It lacks:
#   - ortools and what `from ortools.sat.python import cp_model` imports: pandas (at import time; pandas 3
#     needs only numpy >= 2.0.2 and python-dateutil, which the image has: no pytz, tzdata only on
#     Windows), immutabledict, protobuf 6.33.x
#   - optuna and colorlog (its other needs, alembic and SQLAlchemy, serve database storages only;
#     dery's studies live in memory, and leaving them out saves 5 MB of the carry)
#   - Fashion-MNIST: the test split and an 8k-image slice of train (unlabelled 7k after 100 labels per class)
# Everything that travels (the project tree and .whl/) must stay under 64 MiB: project ~12 MiB, these
# wheels ~41 MiB (ortools 28.5, pandas 11.5), data ~7.5 MiB; the guard at the end checks that total.
# PREP_EXTRA="pkg==ver ..." adds wheels when a gpu_check run reports a module missing (its summary's
# "environment" block); the guard still has to pass.
set -euo pipefail
cd "$(dirname "$0")/.."
# the project's interpreter (PYTHON, ./.venv, or python3): the data self-check imports dery_deploy and
# torch, which a bare python3 need not have
PYTHON_GIVEN=${PYTHON:-}
source scripts/python.sh
PY=$PYTHON
W=.whl
SRC=${FMNIST_SRC:-/usr/share/datasets/fashion-mnist}
N_TRAIN=${N_TRAIN:-8000}
LIMIT_MIB=64
HEADROOM_MIB=2 # for files that appear in the tree before the run (a note, a new test)

git check-ignore -q "$W/" || { echo "gpu_prep: $W is not git-ignored; refusing to fill it" >&2; exit 1; }

if [ "${1:-}" != --check ]; then
  mkdir -p "$W/fmnist"
  rm -f "$W"/*.whl
  # --no-deps with explicit pins: pip resolves against this machine otherwise, not against the GPU image
  # shellcheck disable=SC2086  # PREP_EXTRA is a word list on purpose
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$W" \
    ortools==9.15.6755 protobuf==6.33.6 immutabledict==4.3.1 pandas==3.1.1 \
    optuna==5.0.0 colorlog==6.12.0 ${PREP_EXTRA:-}

  # Fashion-MNIST: the whole test split, and the first N_TRAIN training images as valid IDX files
  cp "$SRC"/t10k-images-idx3-ubyte.gz "$SRC"/t10k-labels-idx1-ubyte.gz "$W/fmnist/"
  "$PY" - "$SRC" "$W/fmnist" "$N_TRAIN" <<'EOF'
import gzip, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
images = gzip.open(f"{src}/train-images-idx3-ubyte.gz").read()
labels = gzip.open(f"{src}/train-labels-idx1-ubyte.gz").read()
assert struct.unpack(">II", images[:8]) == (2051, 60000) and struct.unpack(">II", labels[:8]) == (2049, 60000)
with gzip.open(f"{dst}/train-images-idx3-ubyte.gz", "wb") as f:
    f.write(struct.pack(">IIII", 2051, n, 28, 28) + images[16 : 16 + n * 784])
with gzip.open(f"{dst}/train-labels-idx1-ubyte.gz", "wb") as f:
    f.write(struct.pack(">II", 2049, n) + labels[8 : 8 + n])
EOF
fi
ls -la "$W" "$W/fmnist"

# The size guard: everything that travels, the tracked and untracked-unignored files of the tree plus .whl/,
# in bytes as copied (apparent size). du reads the file list itself: through xargs a long list is split
# into several du runs, and the last "total" line counts only the last of them.
mib() { echo $((($1 + 1048575) / 1048576)); }
tree_b=$({ git ls-files -z --cached --others --exclude-standard | du -cb --apparent-size --files0-from=- 2>/dev/null || true; } | tail -1 | cut -f1)
whl_b=$(du -sb --apparent-size "$W" | cut -f1)
total_b=$((tree_b + whl_b))
echo "gpu_prep: carried: .whl/ $(mib "$whl_b") MiB + project tree $(mib "$tree_b") MiB = $(mib "$total_b") MiB" \
  "($total_b bytes) of the ${LIMIT_MIB} MiB limit"
if [ "$total_b" -gt $(((LIMIT_MIB - HEADROOM_MIB) * 1048576)) ]; then
  echo "gpu_prep: over ${LIMIT_MIB} MiB less ${HEADROOM_MIB} MiB headroom: lower N_TRAIN (now $N_TRAIN) or drop a wheel" >&2
  exit 1
fi

# the data slice loads as the project reads it
if ! DERY_DATA="$PWD/$W/fmnist" "$PY" -c "
from dery_deploy.data.fashion_mnist import load_split
print('gpu_prep: fmnist train', len(load_split('train')), 'test', len(load_split('test')))"; then
  venv=absent
  [ -x .venv/bin/python ] && venv=present
  echo "gpu_prep: $PY cannot import torch and dery_deploy to load the data slice ($W is filled; only this" \
    "self-check failed). The interpreter comes from PYTHON (${PYTHON_GIVEN:-not set}), else ./.venv ($venv)," \
    "else python3: name one that has the project, e.g. \`PYTHON=/path/to/venv/bin/python bash" \
    "scripts/gpu_prep.sh --check\`, or install the project here (bash scripts/setup.sh)" >&2
  exit 1
fi
