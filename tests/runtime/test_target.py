import pytest

from dery_deploy.errors import DeryError
from dery_deploy.runtime.target import Target, backend_of, is_int8


def test_a_target_prints_and_parses_in_one_form():
    t = Target.parse("openvino/int8")
    assert (t.backend, t.precision, t.threads, str(t), t.is_int8) == ("openvino", "int8", None, "openvino/int8", True)
    assert Target.parse(str(Target("onnxruntime", "fp32"))) == Target("onnxruntime", "fp32")
    assert backend_of("tensorrt/fp16") == "tensorrt" and not is_int8("onnxruntime/fp32") and not is_int8("")


def test_a_target_with_its_thread_count_is_another_target():
    t = Target.parse("onnxruntime/fp32/t2")
    assert (t.backend, t.precision, t.threads, str(t)) == ("onnxruntime", "fp32", 2, "onnxruntime/fp32/t2")
    assert Target.parse(str(Target("openvino", "int8", 16))) == Target("openvino", "int8", 16)
    assert len({Target("onnxruntime", "fp32", 1), Target("onnxruntime", "fp32", 2), Target("onnxruntime", "fp32")}) == 3
    assert is_int8("openvino/int8/t2") and backend_of("openvino/int8/t2") == "openvino" and not is_int8("a/int8/x")


def test_a_target_of_a_profile_names_its_count_only_where_the_run_counts():
    class Measured:  # what a profile or a plan carries
        backend, precision, threads = "openvino", "fp32", 2

    assert str(Target.of(Measured())) == "openvino/fp32"
    assert str(Target.of(Measured(), counted=True)) == "openvino/fp32/t2"


@pytest.mark.parametrize(
    "bad", ["openvino", "openvino/int8/x", "/int8", "openvino/", "openvino/int8/t0", "openvino/int8/2", "a/b/t1/c"]
)
def test_a_malformed_target_names_the_value_and_the_form(bad):
    with pytest.raises(
        DeryError,
        match=rf"--targets takes backend/precision pairs \(e.g. openvino/int8\), optionally with a thread count "
        rf"\(onnxruntime/fp32/t2\), got '{bad}'",
    ):
        Target.parse(bad, "run", "--targets")
