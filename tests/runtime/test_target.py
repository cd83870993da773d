import pytest

from dery_deploy.errors import DeryError
from dery_deploy.runtime.target import Target, backend_of, is_int8


def test_a_target_prints_and_parses_in_one_form():
    t = Target.parse("openvino/int8")
    assert (t.backend, t.precision, str(t), t.is_int8) == ("openvino", "int8", "openvino/int8", True)
    assert Target.parse(str(Target("onnxruntime", "fp32"))) == Target("onnxruntime", "fp32")
    assert backend_of("tensorrt/fp16") == "tensorrt" and not is_int8("onnxruntime/fp32") and not is_int8("")


@pytest.mark.parametrize("bad", ["openvino", "openvino/int8/x", "/int8", "openvino/"])
def test_a_malformed_target_names_the_value_and_the_form(bad):
    with pytest.raises(
        DeryError, match=rf"--targets takes backend/precision pairs \(e.g. openvino/int8\), got '{bad}'"
    ):
        Target.parse(bad, "run", "--targets")
