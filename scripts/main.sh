#!/usr/bin/env bash
# The main job on the embedded default: set up, then `dery run` (the Fashion-MNIST zoo on this machine).
# Extra arguments go to `dery run`, e.g. `bash scripts/main.sh --quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
bash scripts/setup.sh
exec "$PYTHON" -m dery_deploy.cli.main run "$@"
