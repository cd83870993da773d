#!/usr/bin/env bash
# Every CUDA path of dery_deploy once, on one H100/H200, in one command of under 8 minutes, on the
# embedded zoo `fashion`: similarity on CUDA; profiles with torch-cudagraph, torch-eager and
# torch-compile (fp16, batch 1 and 32, each checked against --verify mixed assemblies); assemble under a
# budget read off the CUDA-graph donor latencies; a short CUDA fine-tune; ONNX and CUDA AOTInductor
# exports with parity; the GPU-marked tests. Writes under $OUT (default /tmp/gpu_check):
#   summary.json   every step's rc and seconds, and what each step measured (see the end of this file)
#   log.txt        everything the steps printed
#   profiles.tgz   the profile JSONs, the plan, the fine-tune metrics and the export reports
#   pytest-gpu.xml the GPU-marked tests (JUnit)
#
# The GPU machine has no network and lacks ortools, optuna and Fashion-MNIST: fill .whl/ here first
# (bash scripts/gpu_prep.sh), then from the project root, carrying it:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# Knobs (environment): DEADLINE (s, 455) bounds all steps, so the summary is written within 8 minutes;
# K (2 equivalence sets: 55 items per backend and batch), BATCHES (1,32), VERIFY (10); W (work folder,
# wiped unless RESUME=1); SELECT=1 lets assemble select by short training (off: it took 6.6 minutes on the
# 2-core CPU, its time on the GPU is unknown, and the finetune step trains on CUDA anyway; the program, the
# proxy and the finalists' measurement on the device run either way); GPU_CHECK_CPU=1 runs the same steps
# with CPU stand-ins (device cpu, fp32, onnxruntime for torch-cudagraph): it checks the command lines and
# the summary on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu_check}
W=${W:-/tmp/dery_gpu_check}
DEADLINE=${DEADLINE:-455}
K=${K:-2}
BATCHES=${BATCHES:-1,32}
VERIFY=${VERIFY:-10}
mkdir -p "$OUT"
[ "${RESUME:-0}" = 1 ] || rm -rf "$W"
mkdir -p "$W"
: >"$W/steps.tsv"
: >"$OUT/log.txt"
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "gpu_check: $(date -u +%FT%TZ) in $PWD, work folder $W, deadline ${DEADLINE}s"

# What the program and the selection import: ortools' cp_model imports pandas at import time (`import ortools`
# alone loads neither), optuna the selection's study. The summary's "solver_imports" says where they came from.
NEEDS='from ortools.sat.python import cp_model; import optuna'
SOLVER_IMPORTS="from the image"
if ! python3 -c "$NEEDS" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    # --target keeps the image's packages untouched; PYTHONPATH puts these first (protobuf 6.33 for ortools)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dery_site \
      .whl/*.whl || echo "gpu_check: installing .whl/ failed"
    export PYTHONPATH=/tmp/dery_site${PYTHONPATH:+:$PYTHONPATH}
    SOLVER_IMPORTS="from the carried .whl/ ($(cd .whl && ls -- *.whl | cut -d- -f1-2 | tr '\n' ' '))"
    why=$(python3 -c "$NEEDS" 2>&1 | tail -1) && why=""
    [ -z "$why" ] || SOLVER_IMPORTS="FAILED after installing .whl/: $why"
  else
    SOLVER_IMPORTS="FAILED: cp_model or optuna missing and no .whl/ carried (run scripts/gpu_prep.sh, carry [\".whl\"])"
  fi
  echo "gpu_check: solver imports $SOLVER_IMPORTS"
fi
export SOLVER_IMPORTS
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -d .whl/fmnist ] && export DERY_DATA=$PWD/.whl/fmnist
export DERY_CACHE=$W/cache PYTHONUNBUFFERED=1 COLUMNS=160
D=(python3 -m dery_deploy.cli.main)

if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then
  DEV=cpu TD=cpu PREC=fp32 SHIP=onnxruntime
else
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  case "$GPU" in
    *H200*) DEV=h200 ;;
    *H100*) DEV=h100 ;;
    *) echo "gpu_check: needs an H100 or H200, nvidia-smi says '${GPU:-no GPU}'"; exit 2 ;;
  esac
  TD=cuda PREC=fp16 SHIP=torch-cudagraph
fi
export DEV TD PREC SHIP

# step NAME LIMIT STDOUT_FILE CMD...: run CMD under `timeout`, clipped to what is left of DEADLINE; its
# stdout goes to STDOUT_FILE ("-": the log) and "name rc seconds limit" to steps.tsv ("skipped" past the deadline)
step() {
  local name=$1 limit=$2 dest=$3 left rc s
  shift 3
  left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then
    printf '%s\tskipped\t0\t0\n' "$name" >>"$W/steps.tsv"
    echo "=== $name: skipped (deadline)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  s=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  if [ "$dest" = - ]; then
    timeout -k 10 "$limit" "$@"
  else
    timeout -k 10 "$limit" "$@" >"$dest"
  fi
  rc=$?
  [ "$dest" = - ] || tail -c 1500 "$dest"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - s))" "$limit" >>"$W/steps.tsv"
  echo "=== $name: rc=$rc in $((SECONDS - s))s"
}

step environment 60 "$W/environment.json" python3 -c '
import importlib, json, os
env = {"modules": {}}
for m in ("torch", "timm", "onnx", "onnxruntime", "ortools", "ortools.sat.python.cp_model", "google.protobuf", "optuna",
          "pandas", "pynvml", "typer"):
    try:
        env["modules"][m] = getattr(importlib.import_module(m), "__version__", "present")
    except Exception as e:  # noqa: BLE001 - a missing module is what this step reports
        env["modules"][m] = f"MISSING: {type(e).__name__}: {e}"
import onnxruntime, torch
from dery_deploy.runtime.devices import gpu_fingerprint, torch_gpu_identity
env["cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name()
env["ort_providers"] = onnxruntime.get_available_providers()
env["gpu_fingerprint"] = gpu_fingerprint()
env["torch_gpu_identity"] = torch_gpu_identity()
env["data"] = os.environ.get("DERY_DATA")
print(json.dumps(env, indent=1))'
step devices 45 "$W/devices.json" "${D[@]}" devices --json
step similarity 90 "$W/similarity.json" "${D[@]}" similarity --zoo fashion --device "$TD" --data fashion-mnist --json
step partition 45 "$W/partition.json" "${D[@]}" partition --zoo fashion -K "$K" --json
profile() {  # profile BACKEND LIMIT
  step "profile-$1" "$2" "$W/profile-$1.json" "${D[@]}" profile --zoo fashion --device "$DEV" --backend "$1" \
    --precision "$PREC" --batch "$BATCHES" --verify "$VERIFY" --json
}
profile "$SHIP" 150

# the budget: 1.2 x the median whole-donor latency at batch 1, so some donors fit and some do not
B=$(python3 - "$W/profile-$SHIP.json" <<'EOF' || echo 1
import json, os, statistics, sys
try:
    text = open(sys.argv[1]).read()
    summaries = json.loads(text[min(i for i in (text.find("["), text.find("{")) if i >= 0) :])
    ms = [d["latency_ms"] for s in summaries if s["batch"] == 1 for d in s["donors"].values()]
except Exception:  # noqa: BLE001 - the step did not finish: read the donors from the (partial) profile file
    dev, ship, prec = os.environ["DEV"], os.environ["SHIP"], os.environ["PREC"]
    path = f"{os.environ['DERY_CACHE']}/profiles/{dev}/fashion-{ship}-{prec}-b1.json"
    ms = [r["median_ms"] for r in json.load(open(path))["records"].values() if r["kind"] == "donor"]
print(round(1.2 * statistics.median(ms), 4))
EOF
)
echo "budget $B ms = 1.2 x the median donor latency ($SHIP $PREC batch 1)"
echo "$B" >"$W/budget.txt"
SEL=--no-select
[ "${SELECT:-0}" = 1 ] && SEL=--select
step assemble 60 "$W/assemble.json" "${D[@]}" assemble --zoo fashion --device "$DEV" --backend "$SHIP" --precision "$PREC" \
  --batch 1 --latency-ms "$B" --top 5 "$SEL" -o "$W/plan.json" --json
step finetune 90 - "${D[@]}" finetune "$W/plan.json" -o "$W/ft" --epochs-adapter 1 --epochs-full 1 --device "$TD" --force
step export-onnx 45 "$W/export-onnx.json" "${D[@]}" export "$W/ft" --format onnx --device "$DEV" --allow-over-budget --force --json
step export-aoti 120 "$W/export-aoti.json" "${D[@]}" export "$W/ft" --format aoti --device "$DEV" --allow-over-budget --force --json
step pytest-gpu 90 - python3 -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" -rs --junitxml="$OUT/pytest-gpu.xml" tests
profile torch-eager 100
profile torch-compile 600 # last: whatever is left of the deadline; an interrupted profile still counts its items
echo "dynamo recompile-limit warnings (items silently run eager): $(grep -c 'recompile_limit\|cache_size_limit' "$OUT/log.txt")"

SECONDS_SO_FAR=$SECONDS timeout 60 python3 - "$W" "$OUT" "$B" <<'EOF'
import glob, json, os, re, statistics, sys
import xml.etree.ElementTree as ET

W, out, budget = sys.argv[1], sys.argv[2], sys.argv[3]


def load(path):
    """A step's JSON stdout (text before the first bracket is skipped); a string saying why when there is none."""
    try:
        text = open(path).read()
        starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
        return json.loads(text[min(starts) :]) if starts else f"no JSON in {os.path.basename(path)}"
    except Exception as e:  # noqa: BLE001 - the summary reports what is missing instead of failing
        return f"missing: {type(e).__name__}: {e}"


def pick(d, keys):
    return {k: d.get(k) for k in keys} if isinstance(d, dict) else d


devs = load(f"{W}/devices.json")
s = {
    "device": os.environ["DEV"],
    "backend_shipped": os.environ["SHIP"],
    "precision": os.environ["PREC"],
    "budget_ms": float(budget),
    "solver_imports": os.environ.get("SOLVER_IMPORTS"),
    "steps": [
        {k: int(v) if v.isdigit() else v for k, v in zip(("name", "rc", "seconds", "limit"), ln.rstrip("\n").split("\t"))}
        for ln in open(f"{W}/steps.tsv")
    ],
    "environment": load(f"{W}/environment.json"),
    "devices_here": [d["id"] for d in devs if d.get("here")] if isinstance(devs, list) else devs,
    "similarity": load(f"{W}/similarity.json"),
    "partition": pick(load(f"{W}/partition.json"), ("K", "key", "objective", "seconds", "max_block_units")),
    "profiles": {},
}
donors = {}  # (backend, batch) -> {donor: median ms}
for f in sorted(glob.glob(f"{W}/cache/profiles/*/*.json")):
    p = json.load(open(f))
    recs = p["records"].values()
    v = p.get("verify") or {}
    d_ms = {r["donor"]: r["median_ms"] for r in recs if r["kind"] == "donor"}
    donors[(p["backend"], p["batch"])] = d_ms
    s["profiles"][os.path.basename(f)] = {
        "gpu": (p["fingerprint"]["start"] or {}).get("gpu_name"),
        "fingerprint_end": p["fingerprint"].get("end"),
        "items": len(p["records"]),
        "unstable": sum(not r["stable"] for r in recs),
        "build_s": round(sum(r.get("build_s") or 0 for r in recs), 2),
        "peak_memory_mb_max": max([r.get("peak_memory_mb") or 0 for r in recs] or [0]),
        "donor_ms": d_ms,
        "verify": {
            k: v.get(k)
            for k in ("n", "median_abs_rel_error", "max_abs_rel_error", "raw_median_abs_rel_error",
                      "raw_max_abs_rel_error", "p90_under_prediction", "speed", "scale")
        }
        if v
        else None,
    }
# what the shipped artifact gains over eager: per donor eager latency / the other backend's, and their median
s["speedup_over_eager"] = {}
for (backend, batch), d_ms in sorted(donors.items()):
    eager = donors.get(("torch-eager", batch), {})
    if backend == "torch-eager" or not eager:
        continue
    ratios = {n: round(eager[n] / ms, 3) for n, ms in d_ms.items() if n in eager and ms > 0}
    if ratios:
        s["speedup_over_eager"][f"{backend} b{batch}"] = {"median": statistics.median(ratios.values()), "donors": ratios}
plans = load(f"{W}/assemble.json")
keys = ("predicted", "budget", "solver", "proxy", "blocks")
s["assemble"] = [pick(p, keys) for p in plans] if isinstance(plans, list) else plans
m = load(f"{W}/ft/metrics.json")
s["finetune"] = pick(m, ("train_seconds", "device", "val_accuracy", "test_accuracy", "phase1_val_accuracy", "epochs",
                         "params_m"))
for fmt in ("onnx", "aoti"):
    r = load(f"{W}/ft/export/report-{fmt}.json")
    s[f"export_{fmt}"] = pick(r, ("format", "device", "precision", "batch", "latency_ms", "latency_stable",
                                  "latency_backend", "parity", "budget", "build_s", "load_ok", "error", "bytes"))
try:
    suite = ET.parse(f"{out}/pytest-gpu.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    s["pytest_gpu"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    s["pytest_gpu"]["not_passed"] = [
        f"{c.get('classname')}::{c.get('name')}: {c[0].tag} {(c[0].get('message') or '')[:200]}"
        for c in suite.iter("testcase") if len(c)
    ]
except Exception as e:  # noqa: BLE001
    s["pytest_gpu"] = f"missing: {e!r}"
log = open(f"{out}/log.txt", errors="replace").read()
s["dynamo_recompile_limit_warnings"] = len(re.findall(r"hit config\.(recompile_limit|cache_size_limit)", log))
s["failed_steps"] = [x["name"] for x in s["steps"] if x["rc"] != 0]
s["seconds"] = int(os.environ.get("SECONDS_SO_FAR", 0))
json.dump(s, open(f"{out}/summary.json", "w"), indent=1, default=str)
print(json.dumps(s, indent=1, default=str)[:12000])
EOF
keep=()
for f in cache/profiles plan.json budget.txt ft/metrics.json ft/export/report-onnx.json ft/export/report-aoti.json; do
  [ -e "$W/$f" ] && keep+=("$f")
done
[ ${#keep[@]} -gt 0 ] && tar czf "$OUT/profiles.tgz" -C "$W" "${keep[@]}"
echo "gpu_check: done in ${SECONDS}s; $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f ')"
sleep 1 # let tee flush the log
