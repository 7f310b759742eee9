"""The inputs the load generator sends: a shipped model's own, those given with ``--input``
(the ``NAME:DATATYPE:DIMS`` form ``kairos-profile`` takes), or those the model's V2 metadata
lists, read from the endpoint before the run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.loadgen.transport import Endpoint, TargetUnreachable
from gateway.errors import ConfigError
from gateway.profiles.measure import GrpcTarget, HttpTarget, ProfilingError
from gateway.profiles.payload import TensorSpec, parse_input_flag, specs_from_metadata
from gateway.profiles.schemas import MODEL_INPUTS, InputSpec
from gateway.protocol.translate import NUMPY_DTYPES

MAX_INPUTS = 16
METADATA_TIMEOUT_S = 10.0
INT_HIGH = 1000  # an integer input's values are drawn in [0, 1000) (or the datatype's range)
# What the payload factory renders (raw little-endian and JSON text); BYTES it cannot.
DATATYPES = ("BOOL", "FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


def parse_input(text: str) -> InputSpec:
    """``NAME:DATATYPE:DIMS`` (``--input``), DIMS one row's shape: ``x:FP64:64``,
    ``image:FP32:3x224x224``."""
    spec = parse_input_flag(text)
    if spec.datatype not in DATATYPES:
        raise ConfigError(f"--input {text!r}: datatype {spec.datatype} cannot be generated; expected one of "
                          + ", ".join(DATATYPES))
    return input_spec(spec)


def input_spec(spec: TensorSpec) -> InputSpec:
    row = spec.row_shape
    high = INT_HIGH
    if spec.datatype in NUMPY_DTYPES and np.dtype(NUMPY_DTYPES[spec.datatype]).kind in "iu":
        high = min(INT_HIGH, int(np.iinfo(NUMPY_DTYPES[spec.datatype]).max) + 1)
    return InputSpec(spec.name, spec.datatype, int(np.prod(row)), high, row if len(row) > 1 else ())


def check_inputs(inputs: Sequence[InputSpec]) -> None:
    """Several ``--input`` flags together: distinct names, a bounded count."""
    names = [i.name for i in inputs]
    if len(set(names)) < len(names):
        raise ConfigError(f"--input: each name once, got {', '.join(names)}")
    if len(inputs) > MAX_INPUTS:
        raise ConfigError(f"--input: at most {MAX_INPUTS} inputs")


async def resolve_inputs(endpoint: Endpoint, model: str, given: Sequence[InputSpec]) -> tuple[InputSpec, ...]:
    """The inputs to send: those given, a shipped model's, or the ones the model's metadata lists
    (TargetUnreachable if the endpoint does not answer, ConfigError if it lists none usable)."""
    if given:
        return tuple(given)
    if model in MODEL_INPUTS:
        return MODEL_INPUTS[model]
    url = f"{endpoint.host}:{endpoint.port}"
    target = (GrpcTarget(url, model, timeout_s=METADATA_TIMEOUT_S) if endpoint.protocol == "grpc"
              else HttpTarget(f"http://{url}", model, timeout_s=METADATA_TIMEOUT_S))
    try:
        metadata = await target.metadata()
    except ProfilingError as exc:
        raise TargetUnreachable(f"{model}'s metadata, for its inputs (or give them with --input): {exc}") from None
    finally:
        await target.close()
    try:
        specs = specs_from_metadata(metadata)
    except ConfigError as exc:
        raise ConfigError(f"{model}: {exc}") from None
    bad = [s for s in specs if s.datatype not in DATATYPES]
    if bad:
        raise ConfigError(f"{model}: input {bad[0].name} is {bad[0].datatype}, which the load generator cannot "
                          "generate; give the inputs with --input NAME:DATATYPE:DIMS")
    return tuple(input_spec(s) for s in specs)
