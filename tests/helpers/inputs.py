"""Valid infer requests for an emulated model, from the one table of its inputs.

The emulated servers check every request against the model's inputs
(``servers.schema.inputs_for``: the shipped models' real inputs, ``input0`` for any other
name), so tests build their requests here instead of spelling the tensors out::

    from helpers.inputs import json_body, json_inputs, proto_request, triton_inputs

    body = json_body("rm2", 4, id="a", parameters={"qos_ms": 50})   # HTTP JSON body
    request = proto_request("rm2", 4)                                 # pb.ModelInferRequest
    client.infer("rm2", triton_inputs(tritonclient.http, "rm2", 4))   # tritonclient inputs
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from gateway.profiles.schemas import InputSpec
from gateway.protocol import grpc_predict_v2_pb2 as pb
from servers.schema import ANY_WIDTH, inputs_for

NUMPY_DTYPES = {"FP32": np.float32, "INT64": np.int64}


def specs(model: str) -> tuple[InputSpec, ...]:
    """The inputs the emulated servers advertise and accept for ``model``."""
    return inputs_for(model)


def width(spec: InputSpec) -> int:
    """Features per query of ``spec`` (1 for an input of any width)."""
    return 1 if spec.width == ANY_WIDTH else spec.width


def arrays(model: str, batch: int) -> dict[str, np.ndarray]:
    """One ``[batch, width]`` array per input: FP32 0.5, INT64 ids 1 (valid for any table)."""
    out: dict[str, np.ndarray] = {}
    for s in specs(model):
        value = 0.5 if s.datatype == "FP32" else 1
        out[s.name] = np.full((batch, width(s)), value, dtype=NUMPY_DTYPES[s.datatype])
    return out


def json_inputs(model: str, batch: int) -> list[dict[str, Any]]:
    """The ``inputs`` list of a JSON infer request (inline ``data``)."""
    return [
        {"name": name, "datatype": _datatype(x), "shape": list(x.shape), "data": x.ravel().tolist()}
        for name, x in arrays(model, batch).items()
    ]


def json_body(model: str, batch: int, **fields: Any) -> bytes:
    """A JSON infer request body; ``fields`` are added at the top level (``id``, ``parameters``...)."""
    return orjson.dumps({"inputs": json_inputs(model, batch), **fields})


def proto_request(model: str, batch: int, *, raw: bool = True, **fields: Any) -> pb.ModelInferRequest:
    """A gRPC infer request (``model_name`` set); tensors in ``raw_input_contents``, or in typed
    ``contents`` with ``raw=False``. ``fields`` are more ``ModelInferRequest`` fields (``id``...)."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    for name, x in arrays(model, batch).items():
        tensor = request.inputs.add(name=name, datatype=_datatype(x), shape=list(x.shape))
        if raw:
            request.raw_input_contents.append(x.tobytes())
        elif x.dtype == np.float32:
            tensor.contents.fp32_contents.extend(x.ravel().tolist())
        else:
            tensor.contents.int64_contents.extend(x.ravel().tolist())
    return request


def triton_inputs(client_module: Any, model: str, batch: int, binary: bool = True) -> list[Any]:
    """``InferInput`` objects of ``tritonclient.http`` or ``tritonclient.grpc`` (the module given),
    with their data set; ``binary`` is for HTTP (gRPC always sends raw tensors)."""
    inputs = []
    for name, x in arrays(model, batch).items():
        inp = client_module.InferInput(name, list(x.shape), _datatype(x))
        if client_module.__name__ == "tritonclient.http":
            inp.set_data_from_numpy(x, binary_data=binary)
        else:
            inp.set_data_from_numpy(x)
        inputs.append(inp)
    return inputs


def _datatype(x: np.ndarray) -> str:
    return "FP32" if x.dtype == np.float32 else "INT64"


# One tensor of each kind the V2 translations must carry (every encoding: fixed-size numbers,
# FP16 with no JSON or typed form, BOOL, BYTES with an empty and a non-ASCII element), and
# request parameters of each JSON kind.
MIXED_TENSORS: dict[str, np.ndarray] = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
    "i64": np.array([[-1], [2**40]], dtype=np.int64),
    "u8": np.array([[0, 255]], dtype=np.uint8),
    "b": np.array([[True, False]], dtype=np.bool_),
    "f16": np.array([0.5, -2.0], dtype=np.float16),
    "s": np.array([b"xy", b"", "\u00e9".encode()], dtype=np.object_),
}
MIXED_PARAMS: dict[str, Any] = {"qos_ms": 5, "flag": True, "tag": "t", "ratio": 0.25}
