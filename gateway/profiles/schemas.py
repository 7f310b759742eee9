"""The input tensors of the shipped models: what the emulated servers advertise and check, and
what the load generator and the tests send.

Each input of a model is a 2-D tensor ``[batch, width]``; every input of a request has the
same batch. ``MODEL_INPUTS`` lists the recommendation models of DeepRecSys as the paper serves
them. Kept free of I/O and of anything in ``benchmarks`` so that ``servers`` can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input of a model: a V2 ``datatype``, shape ``[batch, width]``, or ``[batch, *dims]``
    for a row of several dimensions (a model's own, given to the load generator)."""

    name: str
    datatype: str
    width: int  # elements per query; -1: any width >= 1 (``servers.schema.GENERIC_INPUT``)
    high: int = 0  # integers: ids drawn in [0, high); floats: ignored (standard normal)
    dims: tuple[int, ...] = ()  # one row's shape when it has several dimensions (width = product)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.dims or (self.width,)

    @property
    def shape(self) -> tuple[int, int]:
        """The shape advertised in model metadata: ``[-1, width]`` (-1: any batch)."""
        return (-1, self.width)


_DLRM = (InputSpec("dense", "FP32", 13), InputSpec("sparse", "INT64", 26, high=100_000))

MODEL_INPUTS: dict[str, tuple[InputSpec, ...]] = {
    "ncf": (InputSpec("user_id", "INT64", 1, high=138_000), InputSpec("item_id", "INT64", 1, high=27_000)),
    "rm2": _DLRM,
    "wnd": _DLRM,
    "mtwnd": _DLRM,
    "dien": (InputSpec("history", "INT64", 100, high=100_000),),
}


def model_inputs(model: str) -> tuple[InputSpec, ...]:
    """The inputs of a shipped model; ConfigError for any other name."""
    try:
        return MODEL_INPUTS[model]
    except KeyError:
        raise ConfigError(f"unknown model {model!r}; expected one of: {', '.join(MODEL_INPUTS)}") from None
