"""V2 inference request bodies with realistic shapes per model, built for a hot loop.

Each model has a small table of input tensors (name, datatype, one row's shape;
``gateway.profiles.schemas.MODEL_INPUTS``, or ``benchmarks.loadgen.inputs`` for another model);
the batch size is ``shape[0]`` of every input, so it is ``shape[0]`` of the first one as V2
routing reads it. Tensor data is rendered ONCE (seeded, deterministic): up to ``MAX_DISTINCT``
elements per input drawn, repeated row by row up to the largest batch, and each request takes a
prefix of it: a byte slice for JSON text and for raw tensors, so building a request costs a few
memory copies and no per-element work. Only the request ``id`` changes per request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from gateway.errors import ConfigError
from gateway.profiles.schemas import MODEL_INPUTS, InputSpec, model_inputs
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.params import CLASS_PARAMETER, QOS_PARAMETER, VARIANT_PARAMETER
from gateway.protocol.translate import NUMPY_DTYPES
from gateway.workload.batch_mix import MAX_BATCH

__all__ = ["MODEL_INPUTS", "InputSpec", "PayloadFactory", "model_inputs"]

MAX_DISTINCT = 1 << 20  # elements drawn per input; rows past them repeat (every shipped model draws 1,000 rows)
MAX_REQUEST_BYTES = 64 << 20  # raw tensor bytes of the largest request: the data is held for it


class _Tensor:
    """One input's data for ``max_batch`` queries, as raw little-endian bytes and as JSON text."""

    def __init__(self, spec: InputSpec, rng: np.random.Generator, max_batch: int) -> None:
        self.spec = spec
        self.shape_tail = ",".join(map(str, spec.row_shape)).encode()
        width = spec.width
        self.distinct = min(MAX_BATCH, max(1, MAX_DISTINCT // width))  # rows drawn
        n = self.distinct * width
        dtype = np.dtype(NUMPY_DTYPES[spec.datatype])
        values: np.ndarray
        if dtype.kind == "f":
            values = np.round(rng.standard_normal(n), 3)  # short JSON text
        elif dtype.kind == "b":
            values = rng.integers(0, 2, n).astype(bool)
        else:
            values = rng.integers(0, spec.high, n)
        raw = values.astype(dtype)
        self.itemsize = dtype.itemsize
        rows = max(self.distinct, max_batch)
        self.raw = raw.tobytes() * -(-rows // self.distinct)
        # "v0,v1,...": the text for the first k elements is text[:ends[k-1]].
        tokens = ["true" if v else "false" for v in values.tolist()] if dtype.kind == "b" else list(map(repr, values.tolist()))
        self.text = ",".join(tokens).encode()
        self.ends = np.cumsum(np.fromiter(map(len, tokens), dtype=np.int64, count=n) + 1) - 1

    def shape(self, batch: int) -> list[int]:
        return [batch, *self.spec.row_shape]

    def raw_prefix(self, batch: int) -> memoryview:
        return memoryview(self.raw)[: batch * self.spec.width * self.itemsize]

    def text_prefix(self, batch: int) -> bytes:
        full, rest = divmod(batch, self.distinct)
        if not full:
            return self.text[: int(self.ends[rest * self.spec.width - 1])]
        parts = [self.text] * full
        if rest:
            parts.append(self.text[: int(self.ends[rest * self.spec.width - 1])])
        return b",".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(field: int, data: bytes | memoryview) -> bytes:
    """A protobuf length-delimited field's tag and length (the caller appends the data)."""
    return _varint(field << 3 | 2) + _varint(len(data))


_PROTO_ID = 3  # ModelInferRequest.id
_PROTO_RAW_INPUT = 7  # ModelInferRequest.raw_input_contents


class PayloadFactory:
    """Builds V2 infer requests for one model and QoS, in three encodings.

    * ``json(batch, id)``: an HTTP/REST JSON body (flat row-major ``data``).
    * ``binary(batch, id)``: (body, JSON header length) for the HTTP binary tensor extension.
    * ``grpc(batch, id)``: a serialized ``ModelInferRequest`` with ``raw_input_contents``; the
      small per-batch prefix (model, parameters, input metadata) is serialized by protobuf once
      and cached, and the id and raw tensors are appended as protobuf fields (valid encoding:
      fields may come in any order).
    """

    def __init__(
        self,
        model: str,
        qos_ms: float | None,
        *,
        seed: int = 0,
        max_batch: int = MAX_BATCH,
        service_class: str | None = None,
        variant: str | None = None,
        inputs: Sequence[InputSpec] = (),
    ) -> None:
        """``inputs``: the model's inputs where it is not one of the shipped five. ConfigError
        if a request of ``max_batch`` would carry more than ``MAX_REQUEST_BYTES`` of tensors."""
        self.model = model
        self.service_class = service_class
        self.specs = tuple(inputs) or model_inputs(model)
        self.max_batch = max_batch
        size = max_batch * sum(s.width * np.dtype(NUMPY_DTYPES[s.datatype]).itemsize for s in self.specs)
        if size > MAX_REQUEST_BYTES:
            raise ConfigError(
                f"{model}: a batch of {max_batch} is {size / 2**20:.0f} MiB of tensors, over the load generator's "
                f"{MAX_REQUEST_BYTES >> 20} MiB a request: draw smaller batches (--batch-mix fixed:N or uniform:A-B)"
            )
        rng = np.random.default_rng([seed, 7])
        self._tensors = [_Tensor(s, rng, max_batch) for s in self.specs]
        params: dict[str, float | str] = {} if qos_ms is None else {QOS_PARAMETER: float(qos_ms)}
        if service_class is not None:
            params[CLASS_PARAMETER] = service_class
        if variant is not None:
            params[VARIANT_PARAMETER] = variant
        self._json_params = orjson.dumps(params)
        self._proto_params = {
            k: pb.InferParameter(string_param=v) if isinstance(v, str) else pb.InferParameter(double_param=v)
            for k, v in params.items()
        }
        self._proto_prefix: dict[int, bytes] = {}
        self._binary_header: dict[int, bytes] = {}

    def _check(self, batch: int) -> None:
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch {batch} outside 1..{self.max_batch}")

    # -- HTTP/REST JSON ----------------------------------------------------------------------
    def json(self, batch: int, request_id: str) -> bytes:
        self._check(batch)
        parts = [b'{"id":', orjson.dumps(request_id), b',"parameters":', self._json_params, b',"inputs":[']
        for i, t in enumerate(self._tensors):
            s = t.spec
            parts.append(b"," if i else b"")
            parts.append(b'{"name":"%s","datatype":"%s","shape":[%d,%s],"data":[' % (
                s.name.encode(), s.datatype.encode(), batch, t.shape_tail))
            parts.append(t.text_prefix(batch))
            parts.append(b"]}")
        parts.append(b"]}")
        return b"".join(parts)

    # -- HTTP/REST binary tensor extension ---------------------------------------------------
    def binary(self, batch: int, request_id: str) -> tuple[bytes, int]:
        self._check(batch)
        tail = self._binary_header.get(batch)
        if tail is None:
            inputs = [
                {
                    "name": t.spec.name,
                    "datatype": t.spec.datatype,
                    "shape": t.shape(batch),
                    "parameters": {"binary_data_size": len(t.raw_prefix(batch))},
                }
                for t in self._tensors
            ]
            tail = b',"parameters":' + self._binary_params() + b',"inputs":' + orjson.dumps(inputs) + b"}"
            self._binary_header[batch] = tail
        header = b'{"id":' + orjson.dumps(request_id) + tail
        return b"".join([header, *(t.raw_prefix(batch) for t in self._tensors)]), len(header)

    def _binary_params(self) -> bytes:
        params = orjson.loads(self._json_params)
        params["binary_data_output"] = True
        return orjson.dumps(params)

    # -- gRPC --------------------------------------------------------------------------------
    def grpc(self, batch: int, request_id: str) -> bytes:
        self._check(batch)
        prefix = self._proto_prefix.get(batch)
        if prefix is None:
            msg = pb.ModelInferRequest(model_name=self.model, parameters=self._proto_params)
            for t in self._tensors:
                msg.inputs.add(name=t.spec.name, datatype=t.spec.datatype, shape=t.shape(batch))
            prefix = msg.SerializeToString()
            self._proto_prefix[batch] = prefix
        rid = request_id.encode()
        parts: list[bytes | memoryview] = [prefix, _len_field(_PROTO_ID, rid), rid]
        for t in self._tensors:
            raw = t.raw_prefix(batch)
            parts.append(_len_field(_PROTO_RAW_INPUT, raw))
            parts.append(raw)
        return b"".join(parts)
