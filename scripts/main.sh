#!/usr/bin/env bash
# The main job on the embedded default: set up, then `dery run` (the Fashion-MNIST zoo on this machine).
# Extra arguments go to `dery run`, e.g. `bash scripts/main.sh --quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m dery_deploy.cli.main run "$@"
