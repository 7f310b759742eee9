"""The check of an infer request's inputs against its model's (servers.schema), and the table
it reads (gateway.profiles.schemas), including the generic ``input0`` of any other model."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest, ConfigError
from gateway.profiles.schemas import MODEL_INPUTS, model_inputs
from gateway.protocol.v2 import InputTensor
from servers.schema import GENERIC_INPUT, check_inputs, inputs_for


def _tensors(*specs: tuple[str, str, tuple[int, ...]]) -> tuple[InputTensor, ...]:
    return tuple(InputTensor(name, datatype, shape) for name, datatype, shape in specs)


def test_table_and_fallback() -> None:
    assert inputs_for("rm2") == model_inputs("rm2") == MODEL_INPUTS["rm2"]
    assert [(s.name, s.datatype, s.shape) for s in inputs_for("ncf")] == [
        ("user_id", "INT64", (-1, 1)),
        ("item_id", "INT64", (-1, 1)),
    ]
    assert inputs_for("my-own-model") == (GENERIC_INPUT,)
    assert (GENERIC_INPUT.name, GENERIC_INPUT.datatype, GENERIC_INPUT.shape) == ("input0", "FP32", (-1, -1))
    with pytest.raises(ConfigError, match="unknown model 'my-own-model'"):
        model_inputs("my-own-model")


def test_check_inputs_returns_the_batch_in_any_order() -> None:
    specs = inputs_for("rm2")
    assert check_inputs(specs, _tensors(("sparse", "INT64", (7, 26)), ("dense", "FP32", (7, 13)))) == 7
    generic = inputs_for("other")
    assert check_inputs(generic, _tensors(("input0", "FP32", (3, 1)))) == 3
    assert check_inputs(generic, _tensors(("input0", "FP32", (3, 500)))) == 3


@pytest.mark.parametrize(
    ("model", "tensors", "message"),
    [
        ("rm2", (("dense", "FP32", (1, 13)), ("dense", "FP32", (1, 13))), "input 'dense' appears more than once"),
        ("other", (("x", "FP32", (1, 1)),), "unknown input 'x': this model's input is input0"),
        ("other", (("input0", "INT64", (1, 1)),), "input 'input0': expected datatype FP32, got INT64"),
        ("other", (("input0", "FP32", (2, 0)),), "input 'input0': expected shape [batch, width], got [2, 0]"),
        ("other", (("input0", "FP32", (2,)),), "input 'input0': expected shape [batch, width], got [2]"),
        ("other", (("input0", "FP32", (2, 3, 4)),), "input 'input0': expected shape [batch, width], got [2, 3, 4]"),
        ("dien", (("history", "INT64", (2, 99)),), "input 'history': expected shape [batch, 100], got [2, 99]"),
    ],
)
def test_check_inputs_names_the_input(
    model: str, tensors: tuple[tuple[str, str, tuple[int, ...]], ...], message: str
) -> None:
    with pytest.raises(BadRequest) as info:
        check_inputs(inputs_for(model), _tensors(*tensors))
    assert message in str(info.value)
