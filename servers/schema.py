"""What an emulated model takes as input, and the check of an infer request against it.

A shipped model (``gateway.profiles.schemas.MODEL_INPUTS``) takes its real inputs, each
``[batch, width]``; any other model takes one FP32 ``input0`` of any width. Both front ends
advertise ``inputs_for(model)`` in model metadata and answer a request that does not match it
with ``BadRequest`` (HTTP 400, gRPC INVALID_ARGUMENT) naming the input. Tensor data is never
read: its size was checked against shape x datatype when the request was parsed.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import BadRequest
from gateway.profiles.schemas import MODEL_INPUTS, InputSpec
from gateway.protocol.limits import quote
from gateway.protocol.v2 import InputTensor

ANY_WIDTH = -1
# A model with no entry in MODEL_INPUTS: one FP32 input, [batch, any width].
GENERIC_INPUT = InputSpec("input0", "FP32", ANY_WIDTH)


def inputs_for(model: str) -> tuple[InputSpec, ...]:
    """The inputs ``model`` advertises and accepts."""
    return MODEL_INPUTS.get(model, (GENERIC_INPUT,))


def check_inputs(specs: Sequence[InputSpec], inputs: Sequence[InputTensor]) -> int:
    """The batch size of ``inputs``; BadRequest unless they are exactly ``specs``: every input
    once and no other, each of its datatype and of shape ``[batch, width]``, one batch for all."""
    by_name = {s.name: s for s in specs}
    seen: set[str] = set()
    for t in inputs:
        spec = by_name.get(t.name)
        if spec is None:
            names = ", ".join(s.name for s in specs)
            are = "inputs are" if len(specs) > 1 else "input is"
            raise BadRequest(f"unknown input {quote(t.name)}: this model's {are} {names}")
        if t.name in seen:
            raise BadRequest(f"input {quote(t.name)} appears more than once")
        seen.add(t.name)
        if t.datatype != spec.datatype:
            raise BadRequest(f"input {quote(t.name)}: expected datatype {spec.datatype}, got {t.datatype}")
        if len(t.shape) != 2 or t.shape[0] < 1 or not _width_ok(spec, t.shape[1]):
            expected = "[batch, width]" if spec.width == ANY_WIDTH else f"[batch, {spec.width}]"
            raise BadRequest(f"input {quote(t.name)}: expected shape {expected}, got {list(t.shape)}")
    for s in specs:
        if s.name not in seen:
            raise BadRequest(f"input {quote(s.name)} is missing")
    first = inputs[0]
    for t in inputs[1:]:
        if t.shape[0] != first.shape[0]:
            raise BadRequest(
                f"input {quote(t.name)}: batch {t.shape[0]} differs from input {quote(first.name)}'s "
                f"batch {first.shape[0]}: every input must have the same shape[0]"
            )
    return int(first.shape[0])


def _width_ok(spec: InputSpec, width: int) -> bool:
    return width >= 1 if spec.width == ANY_WIDTH else width == spec.width
