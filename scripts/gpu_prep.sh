#!/usr/bin/env bash
# Fill the git-ignored .whl/ with what the GPU machine lacks, before `scripts/gpu_check.sh` runs there.
#
# Run here, in the project root, on a machine with network access:   bash scripts/gpu_prep.sh
# then carry ".whl" with the tree:   run(command="bash scripts/gpu_check.sh", carry=[".whl"])
#
# The GPU image (Python 3.12, x86_64, no network) has torch, torchvision, timm, onnx, onnxscript,
# onnxruntime, nvidia-ml-py, rich, typer, safetensors, pyyaml, matplotlib, markdown, pytest (and what
# they pull in: numpy, packaging, typing_extensions, tqdm, MarkupSafe). It lacks:
#   - ortools and what it needs at import: immutabledict, protobuf 6.33.x
#   - optuna and colorlog (its other needs, alembic and SQLAlchemy, serve database storages only;
#     dery's studies live in memory, and leaving them out saves 5 MB of the carry)
#   - Fashion-MNIST: the test split and a 20k-image slice of train (all of it would break the
#     64 MiB the tree may carry: project ~13 MB + these wheels ~31 MB + data ~13 MB)
# PREP_EXTRA="pkg==ver ..." adds wheels when a gpu_check run reports a module missing (its summary's
# "imports" block); keep the total under the carry limit this script prints.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
W=.whl
SRC=${FMNIST_SRC:-/usr/share/datasets/fashion-mnist}
N_TRAIN=${N_TRAIN:-20000}

git check-ignore -q "$W/" || { echo "gpu_prep: $W is not git-ignored; refusing to fill it" >&2; exit 1; }
mkdir -p "$W/fmnist"
rm -f "$W"/*.whl

# --no-deps with explicit pins: pip resolves against this machine otherwise, not against the GPU image
# shellcheck disable=SC2086  # PREP_EXTRA is a word list on purpose
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$W" \
  ortools==9.15.6755 protobuf==6.33.6 immutabledict==4.3.1 \
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
DERY_DATA="$PWD/$W/fmnist" "$PY" -c "
from dery_deploy.data.fashion_mnist import load_split
print('gpu_prep: fmnist train', len(load_split('train')), 'test', len(load_split('test')))"

ls -la "$W" "$W/fmnist"
whl_mb=$(du -sm "$W" | cut -f1)
tree_mb=$(git ls-files -z | xargs -0 du -cm 2>/dev/null | tail -1 | cut -f1)
echo "gpu_prep: .whl ${whl_mb} MB + tracked tree ~${tree_mb} MB (untracked, non-ignored files travel too); limit 64 MiB"
if [ $((whl_mb + tree_mb)) -ge 62 ]; then echo "gpu_prep: too close to the 64 MiB carry limit" >&2; exit 1; fi
