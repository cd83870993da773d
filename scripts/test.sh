#!/usr/bin/env bash
# Set up, check the code (ruff lint + format, mypy on every package), then run the test suite
# without the tests marked slow (about 10 minutes on 2 cores). Extra arguments go to pytest after
# that, so `bash scripts/test.sh -m slow` runs only the slow ones and `bash scripts/test.sh -m ""`
# runs everything (CI runs both halves). pytest's exit code 5 ("no tests collected") is a failure
# here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
PY=$PYTHON
bash scripts/setup.sh || exit 1
echo "test.sh: ruff check, ruff format --check, mypy"
"$PY" -m ruff check dery_deploy tests scripts || exit 1
"$PY" -m ruff format --check dery_deploy tests scripts || exit 1
"$PY" -m mypy || exit 1
"$PY" -m pytest -q -p no:cacheprovider -m "not slow" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "test.sh: pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
