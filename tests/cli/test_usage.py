"""What a new user meets in the first ten minutes: usage errors, unwritable outputs, narrow
terminals, failed runs. Everything through the real console entry point, in a subprocess."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import TINY_ZOO, assert_one_line_error, run_dery

DERY = shutil.which("dery")


def dery(*args, columns: int = 200, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed `dery` console script (what a user types), else the module."""
    cmd = [DERY] if DERY else [sys.executable, "-m", "dery_deploy.cli.main"]
    env = dict(os.environ, COLUMNS=str(columns))
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize(
    "args,needles",
    [
        (["finetune"], ["Missing option '-o' / '--out'", "dery finetune --help"]),
        (["assemble", "--latency", "3"], ["No such option: --latency", "dery assemble --help"]),
        (["partition", "-K", "not-a-number"], ["Invalid value for '-K' / '--sets'", "'not-a-number'"]),
        (["profile", "--batch"], ["Option '--batch' requires an argument"]),
        (["assembel"], ["No such command 'assembel'", "Did you mean 'assemble'?"]),
        (["zoo", "shwo", "fashion"], ["No such command 'shwo'"]),
        (["run", "--quick", "--verify", "x"], ["Invalid value for '--verify'"]),
        # tagged with the command typed, not the one that writes what it reads
        (["finetune", "nowhere.json", "-o", "out"], ["[finetune] plan file not found: nowhere.json"]),
        (["evaluate", "nowhere"], ["[evaluate] run folder not found: nowhere"]),
    ],
)
def test_usage_errors_are_one_line_exit_2_no_traceback(args, needles):
    p = dery(*args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert_one_line_error(p, *needles)


def test_help_and_no_arguments_are_not_errors():
    assert dery("--help").returncode == 0
    assert dery("assemble", "--help").returncode == 0
    for args in ([], ["zoo"]):  # a command without its subcommand prints its help, and no empty error line
        p = dery(*args)
        assert p.returncode == 0 and "Usage: dery" in p.stdout and p.stderr == "", p.stderr


def test_version_is_the_package_version():
    from dery_deploy import __version__

    p = dery("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"dery {__version__}", (p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize(
    "args",
    [
        [
            "finetune",
            "--donor",
            "mnv3_rot",
            "-o",
            "/etc/passwd/run",
            "--data",
            "fashion-mnist:labels_per_class=2,test_per_class=2",
            "--epochs-adapter",
            "1",
            "--epochs-full",
            "0",
        ],
        [
            "partition",
            "--zoo",
            str(TINY_ZOO),
            "-K",
            "2",
            "--probe",
            "16",
            "--restarts",
            "1",
            "-o",
            "/etc/passwd/p.json",
        ],
    ],
)
def test_unwritable_output_is_one_line(args, tmp_path):
    p = dery(*args, "--cache", str(tmp_path)) if args[0] == "partition" else dery(*args)
    assert_one_line_error(p, "/etc/passwd/")


def _ids_in_full(out: str, ids: list[str]) -> None:
    for i in ids:
        assert re.search(rf"(^|\s){re.escape(i)}(\s|$)", out, re.M), f"{i!r} is cut in:\n{out}"


def test_listings_at_80_columns_keep_every_id_whole():
    p = dery("devices", columns=80)
    assert p.returncode == 0, p.stderr
    _ids_in_full(p.stdout, ["cpu", "h100", "h200", "jetson-agx-orin", "jetson-orin-nano"])
    assert max(len(line) for line in p.stdout.splitlines()) <= 80
    p = dery("zoo", "show", "fashion", columns=80)
    _ids_in_full(
        p.stdout,
        [
            "resnet10t_tops",
            "convnext_lower",
            "mobilenetv3_small_050",
            "vit_tiny_patch16_224",
            "mobilevit_lower",
            "tinynet_rot",
        ],
    )
    assert max(len(line) for line in p.stdout.splitlines()) <= 80
    p = dery("zoo", "list", columns=80)
    _ids_in_full(p.stdout, ["fashion", "imagenet"])
    assert all(not line.rstrip().endswith("…") for line in p.stdout.splitlines())  # text wraps between words


def test_every_listing_has_json():
    listings = (
        ["devices"],
        ["zoo", "list"],
        ["zoo", "show", "fashion"],
        ["zoo", "dissect", "test_resnet", "--size", "32"],
    )
    for args in listings:
        p = dery(*args, "--json")
        assert p.returncode == 0, p.stderr
        json.loads(p.stdout)


def test_eight_donor_partition_at_80_columns(tmp_path):
    donors = [("res", "test_resnet"), ("cnx", "test_convnext"), ("vit", "test_vit"), ("eff", "test_efficientnet")]
    lines = ["name: eight", "input: {channels: 1, size: 32, mean: [0.2190], std: [0.3318]}", "donors:"]
    for i in range(2):
        for name, arch in donors:
            kw = ", kwargs: {img_size: 32, patch_size: 4}" if arch == "test_vit" else ""
            lines.append(f"  - {{name: {name}_number_{i}, arch: {arch}, num_classes: 5, weights: none{kw}}}")
    (tmp_path / "zoo.yaml").write_text("\n".join(lines) + "\n")
    p = dery(
        "partition",
        "--zoo",
        str(tmp_path / "zoo.yaml"),
        "-K",
        "4",
        "--probe",
        "32",
        "--restarts",
        "3",
        "--cache",
        str(tmp_path),
        columns=80,
    )
    assert p.returncode == 0, p.stderr
    _ids_in_full(p.stdout, [f"{n}_number_{i}" for i in range(2) for n, _ in donors])
    assert re.search(r"\[\d+,\d+\)", p.stdout) and "…" not in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= 80


def test_failed_run_records_the_stage_and_the_message(tmp_path):
    out = tmp_path / "r"
    p = run_dery(
        "run",
        "--zoo",
        str(TINY_ZOO),
        "--quick",
        "--budgets",
        "0.5",
        "--data",
        "fashion-mnist:labels_per_class=20,test_per_class=30",
        "--verify",
        "3",
        "-K",
        "9",
        "-o",
        str(out),
    )
    assert_one_line_error(p, "K=9 is larger than donor")
    m = json.loads((out / "run.json").read_text())
    assert m["status"] == "failed" and m["failed_stage"] == "partition" and "K=9" in m["error"]


def test_bad_run_options_are_reported_together(tmp_path):
    p = run_dery("run", "--top", "0", "--verify", "1", "-K", "0", "-o", str(tmp_path / "r"))
    assert_one_line_error(p, "-K must be >= 1", "--top must be >= 1", "--verify must be >= 3")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--budgets", "inf"], "--budgets must be positive finite numbers, got 'inf'"),
        (["--budgets", "0.2,,0.3"], "--budgets must be comma-separated numbers, got '0.2,,0.3'"),
        (["--budgets", ""], "--budgets must be comma-separated numbers, got ''"),
        (["--time-limit", "inf"], "--time-limit must be a positive number of minutes, got inf"),
    ],
    ids=["infinite budget", "empty entry", "empty budgets", "infinite time limit"],
)
def test_a_run_refuses_budgets_and_limits_that_are_no_finite_positive_numbers(tmp_path, args, needle):
    p = run_dery("run", *args, "-o", str(tmp_path / "r"))
    assert_one_line_error(p, needle)
    assert not (tmp_path / "r").exists()  # refused before any work: no folder


def test_a_run_refuses_a_folder_that_holds_a_shipped_package(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "deploy.json").write_text("{}")
    p = run_dery("run", "--zoo", str(TINY_ZOO), "--quick", "-o", str(pkg))
    assert_one_line_error(p, f"{pkg} holds a shipped package (deploy.json), not a run; choose another -o")
    assert sorted(x.name for x in pkg.iterdir()) == ["deploy.json"]  # nothing written beside it


@pytest.mark.parametrize(
    "args,needle",
    [
        (["partition", "-K", "0"], "-K must be >= 1, got 0"),
        (["partition", "--restarts", "0"], "--restarts must be >= 1, got 0"),
        (["partition", "--eps", "-1"], "--eps must be >= 0"),
        (["profile", "--backend", "bogus"], "does not list backend 'bogus'"),
    ],
)
def test_bad_values_are_refused_before_any_work(tmp_path, args, needle):
    """Refused in one line before the similarity (minutes on a new zoo) or the profile starts: nothing is
    written to the cache and no note comes first."""
    p = dery(*args, "--zoo", str(TINY_ZOO), "--cache", str(tmp_path / "cache"))
    assert p.returncode == 2
    assert_one_line_error(p, needle)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))
