#!/usr/bin/env bash
# Issue 30's first target: the wall time of the quick and the default run on fresh clones of two commits,
# interleaved (old quick, new quick, old default, new default), each `dery run --seed 0 [--quick]` alone on
# this machine, with the set-up (scripts/setup.sh) done before the clock starts. Prints one line per run and
# appends them to bench/wall_time.txt under a header (run it with nothing else running: the figures are wall
# times). OLD "-" times NEW alone (its quick run, then its default run).
#
#   bash scripts/bench_wall_time.sh OLD NEW [PYTHON]     # e.g. 84b86fb HEAD /tmp/venv/bin/python
set -u
OLD=$1; NEW=$(git rev-parse --short "$2"); PY=${3:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/bench/wall_time.txt
echo "# $([ "${TESTS:-0}" = 1 ] && echo "TESTS=1 ")bash scripts/bench_wall_time.sh $OLD $2; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%FT%TZ)" >> "$OUT"
run() {  # name commit args...
  local name=$1 commit=$2; shift 2
  local dir; dir=$(mktemp -d /tmp/wall-$name-XXXX)
  git clone -q "$ROOT" "$dir" && git -C "$dir" checkout -q "$commit"
  (cd "$dir" && PYTHON=$PY bash scripts/setup.sh >/dev/null 2>&1)
  local t0 t1 rc
  t0=$(date +%s.%N)
  (cd "$dir" && "$PY" -m dery_deploy.cli.main run --seed 0 "$@" >"$dir/run.log" 2>&1)
  rc=$?
  t1=$(date +%s.%N)
  echo "$name $commit rc=$rc wall_s=$(python3 -c "print(round($t1 - $t0, 1))") run_json_s=$(python3 -c "import json; print(json.load(open('$dir/runs/default/run.json'))['seconds'])")" | tee -a "$OUT"
}
if [ "${TESTS:-0}" = 1 ]; then
  dir=$(mktemp -d /tmp/wall-test-XXXX)
  git clone -q "$ROOT" "$dir" && git -C "$dir" checkout -q "$NEW"
  (cd "$dir" && PYTHON=$PY bash scripts/setup.sh >/dev/null 2>&1)
  t0=$(date +%s.%N)
  (cd "$dir" && PYTHON=$PY bash scripts/test.sh >"$dir/test.log" 2>&1)
  rc=$?
  t1=$(date +%s.%N)
  echo "test_sh $NEW rc=$rc wall_s=$(python3 -c "print(round($t1 - $t0, 1))") $(grep -aEo '[0-9]+ passed' "$dir/test.log" | tail -1 | sed -E 's/([0-9]+) passed/passed=\1/')" | tee -a "$OUT"
fi
[ "$OLD" = - ] || run old_quick "$OLD" --quick
run new_quick "$NEW" --quick
[ "$OLD" = - ] || run old_default "$OLD"
run new_default "$NEW"
"$PY" "$ROOT/scripts/run_times.py"
