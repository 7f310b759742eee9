"""Request payloads for profiling any V2 model: tensors shaped from the model's metadata (or
given on the command line), with the batch size as the first dimension, as V2 HTTP bodies
(JSON or binary tensors) and gRPC requests. Seeded, so a profile run is repeatable."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.errors import ConfigError
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.datatypes import DATATYPE_SIZES
from gateway.protocol.translate import (
    BINARY_CONTENT_TYPE,
    BINARY_DATA_SIZE,
    NUMPY_DTYPES,
    bytes_elements_to_raw,
)

_FLAG = re.compile(r"^(?P<name>[A-Za-z0-9_.-]{1,256}):(?P<datatype>[A-Z0-9]+):(?P<dims>-?\d+(?:x-?\d+)*)$")
MAX_ELEMENTS_PER_ROW = 1 << 24


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input: its shape's first dimension is the batch; any other -1 is given or 1."""

    name: str
    datatype: str
    row_shape: tuple[int, ...]  # the shape of one batch row

    def shape(self, batch: int) -> list[int]:
        return [batch, *self.row_shape]


def parse_input_flag(text: str) -> TensorSpec:
    """``NAME:DATATYPE:DIMS``, DIMS the shape of one row, ``x``-separated: ``x:FP64:64``,
    ``image:FP32:3x224x224``."""
    match = _FLAG.match(text)
    if match is None:
        raise ConfigError(f"--input {text!r}: expected NAME:DATATYPE:DIMS, e.g. x:FP64:64 or image:FP32:3x224x224")
    return _spec(match["name"], match["datatype"], [int(d) for d in match["dims"].split("x")], f"--input {text!r}")


def specs_from_metadata(metadata: Any, fill: dict[str, int] | None = None) -> list[TensorSpec]:
    """The inputs a model's V2 metadata lists; a variable dimension past the first takes
    ``fill[name]`` (else 1). ConfigError if the metadata lists none (give ``--input``)."""
    inputs = metadata.get("inputs") if isinstance(metadata, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise ConfigError(
            "the model's metadata lists no inputs: give them with --input NAME:DATATYPE:DIMS (e.g. x:FP64:64)"
        )
    specs = []
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("shape"), list) or not t["shape"]:
            raise ConfigError(f"model metadata: inputs[{i}] has no shape: give the inputs with --input")
        name, datatype = str(t.get("name", "")), str(t.get("datatype", ""))
        dims = t["shape"][1:]
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            raise ConfigError(f"model metadata: inputs[{i}] has a shape of non-integers {t['shape']!r}: "
                              "give the inputs with --input")
        row = [d if d >= 0 else (fill or {}).get(name, 1) for d in dims]
        specs.append(_spec(name, datatype, row, f"model metadata: inputs[{i}]"))
    return specs


def _spec(name: str, datatype: str, row: Sequence[int], where: str) -> TensorSpec:
    if datatype not in DATATYPE_SIZES or datatype == "BF16":
        raise ConfigError(f"{where}: datatype {datatype!r} cannot be generated")
    if any(d < 1 for d in row) or int(np.prod(row, dtype=np.int64)) > MAX_ELEMENTS_PER_ROW:
        raise ConfigError(f"{where}: every dimension after the batch must be >= 1 (and a row at most 2^24 elements)")
    return TensorSpec(name, datatype, tuple(row))


def random_tensor(spec: TensorSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = spec.shape(batch)
    if spec.datatype == "BYTES":
        return np.array([b"%08d" % v for v in rng.integers(0, 10**8, int(np.prod(shape)))], dtype=object).reshape(shape)
    if spec.datatype == "BOOL":
        return rng.random(shape) < 0.5
    dtype = np.dtype(NUMPY_DTYPES[spec.datatype])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)  # small ids: valid for any embedding table


def _raw(x: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return bytes_elements_to_raw(bytes(e) for e in x.ravel())
    return np.ascontiguousarray(x, dtype=NUMPY_DTYPES[datatype]).tobytes()


@dataclass(frozen=True, slots=True)
class HttpBody:
    body: bytes
    content_type: str
    header_length: int | None


def http_body(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray], binary: bool) -> HttpBody:
    inputs: list[dict[str, Any]] = []
    raws: list[bytes] = []
    for spec, x in zip(specs, arrays, strict=True):
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(x.shape)}
        if binary:
            raw = _raw(x, spec.datatype)
            entry["parameters"] = {BINARY_DATA_SIZE: len(raw)}
            raws.append(raw)
        elif spec.datatype == "BYTES":
            entry["data"] = [bytes(e).decode() for e in x.ravel()]
        else:
            entry["data"] = x.ravel().tolist()
        inputs.append(entry)
    head = orjson.dumps({"inputs": inputs})
    if binary:
        return HttpBody(head + b"".join(raws), BINARY_CONTENT_TYPE, len(head))
    return HttpBody(head, "application/json", None)


def grpc_request(model: str, version: str, specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> bytes:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for spec, x in zip(specs, arrays, strict=True):
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(x.shape))
        request.raw_input_contents.append(_raw(x, spec.datatype))
    return request.SerializeToString()
