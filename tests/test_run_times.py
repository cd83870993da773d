"""The run times the README's set-up section and `dery run --help` state are generated from bench/wall_time.txt
(`scripts/run_times.py`): what was measured, with the machine and commit named, never a hand-kept figure."""

import re
import subprocess
import sys

from dery_deploy.cli.measured_times import TIMES
from dery_deploy.cli.run_times import SCALES, RunTime, phrase
from tests.cli.test_usage import dery
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import run_times  # noqa: E402

WALL = """\
# bash scripts/bench_wall_time.sh 84b86fb HEAD; AMD EPYC, 2 cores; 2026-12-05T12:47:06Z
old_quick 84b86fb rc=0 wall_s=119.8 run_json_s=116.5
new_quick aaaaaaa rc=0 wall_s=198.8 run_json_s=193.9
new_default aaaaaaa rc=0 wall_s=801.9 run_json_s=796.9
# bash scripts/bench_wall_time.sh - HEAD; Intel(R) Xeon(R) Processor, 2 cores; 2026-12-06T02:23:21Z
new_quick bbbbbbb rc=0 wall_s=254.0 run_json_s=249.7
# a note on the runs below, with no machine named
new_quick ccccccc rc=0 wall_s=99.0 run_json_s=98.0
# TESTS=1 bash scripts/bench_wall_time.sh - HEAD; AMD EPYC, 2 cores; 2026-12-07T02:00:00Z
test_sh ddddddd rc=0 wall_s=561.2 passed=643
new_quick ddddddd rc=0 wall_s=150.0 run_json_s=144.1
new_default ddddddd rc=1 wall_s=10.0 run_json_s=9.0
"""


def test_latest_takes_each_machines_last_successful_run_of_each_kind():
    got = {(t.cpu, t.run): t for t in run_times.latest(WALL)}
    assert set(got) == {
        ("AMD EPYC", "quick"), ("AMD EPYC", "default"), ("AMD EPYC", "test"), ("Intel(R) Xeon(R) Processor", "quick"),
    }  # fmt: skip
    assert got["AMD EPYC", "quick"] == RunTime("quick", "AMD EPYC", 2, 144.1, "ddddddd", "2026-12-07")
    assert got["AMD EPYC", "default"].commit == "aaaaaaa"  # the later default run failed: not a run time
    assert got["AMD EPYC", "test"].seconds == 561.2
    # a row under a header that names no machine is not attributed to the machine before it
    assert got["Intel(R) Xeon(R) Processor", "quick"].commit == "bbbbbbb"


def test_phrase_names_machine_commit_and_date():
    times = run_times.latest(WALL)
    assert phrase(times, "quick") == (
        "about 2.4 minutes on a 2-core AMD EPYC VM at ddddddd (2026-12-07), "
        "4.2 minutes on a 2-core Intel(R) Xeon(R) Processor VM at bbbbbbb (2026-12-06)"
    )
    assert phrase([], "default") == "not timed yet"


def test_the_committed_texts_are_what_bench_wall_time_gives():
    check = [sys.executable, str(ROOT / "scripts" / "run_times.py"), "--check"]
    p = subprocess.run(check, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    readme = (ROOT / "README.md").read_text()
    assert run_times.readme_block(TIMES) in readme and TIMES


def test_run_help_states_the_measured_times():
    p = dery("run", "--help", columns=400)
    assert p.returncode == 0, p.stderr
    text = re.sub(r"[\s│]+", " ", p.stdout)
    for kind in ("default", "quick"):
        assert phrase(TIMES, kind) in text, (kind, text)
    assert SCALES in text
