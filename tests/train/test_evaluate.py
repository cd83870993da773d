import json

from dery_deploy.train.evaluate import Evaluation

BASE = {
    "data": "fashion-mnist:labels_per_class=20,test_per_class=30",
    "test_images": 4,
    "top1": 75.0,
    "per_class": {"a": 100.0, "b": 50.0},
    "confusion": [[2, 0], [1, 1]],
    "confusion_png": "confusion.png",
    "params_m": 0.1234,
}
LATENCY = {
    "median_ms": 0.41234,
    "p90_ms": 0.45,
    "p99_ms": 0.5,
    "uncertainty": 0.01234,
    "stable": True,
    "noise": 0.0123,
    "backend": "onnxruntime",
    "threads": 1,
    "precision": "fp32",
    "device": "cpu",
    "batch": 1,
}


def test_evaluation_json_reads_back_and_writes_itself_key_for_key(tmp_path):
    """evaluation.json with and without a latency (`dery evaluate`, `dery run`) reads back and writes the
    same keys in the same order."""
    for d in (BASE, {**BASE, "latency": LATENCY}):
        (tmp_path / "evaluation.json").write_text(json.dumps(d))
        ev = Evaluation.read(tmp_path / "evaluation.json")
        assert json.dumps(ev.to_dict()) == json.dumps(d)
    assert ev.latency is not None and ev.latency.median_ms == 0.41234 and ev.per_class["b"] == 50.0


def test_evaluation_json_from_before_the_p99_reads_back():
    """A latency measured before 2026-11-30 has no p99, uncertainty or thread count."""
    old = {k: v for k, v in LATENCY.items() if k not in ("p99_ms", "uncertainty", "threads")}
    ev = Evaluation.from_dict({**BASE, "latency": old})
    assert ev.latency is not None and ev.latency.p99_ms is None and ev.latency.threads is None
    assert ev.latency.stable and ev.top1 == 75.0
