"""A model outside the shipped five: its inputs given with --input (any row shape, any numeric
datatype) or read from its metadata, and the payloads built for them."""

from __future__ import annotations

import socket

import numpy as np
import orjson
import pytest

from benchmarks.loadgen import LoadConfig, PayloadFactory, parse_url
from benchmarks.loadgen import payloads as payloads_module
from benchmarks.loadgen.inputs import DATATYPES, parse_input, resolve_inputs
from benchmarks.loadgen.transport import TargetUnreachable
from gateway.errors import ConfigError
from gateway.profiles.schemas import MODEL_INPUTS
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.translate import NUMPY_DTYPES


def test_an_input_flag_takes_a_row_of_any_shape_and_numeric_datatype() -> None:
    image = parse_input("image:FP32:3x224x224")
    assert (image.name, image.datatype, image.row_shape, image.width) == ("image", "FP32", (3, 224, 224), 150528)
    x = parse_input("x:FP64:64")
    assert (x.row_shape, x.width, x.dims) == ((64,), 64, ())
    assert parse_input("ids:INT64:2").high == 1000 and parse_input("b:INT8:2").high == 128


@pytest.mark.parametrize(
    ("text", "words"),
    [("input0", "NAME:DATATYPE:DIMS"), ("input0:FP32:0", ">= 1"), ("a b:FP32:4", "NAME:DATATYPE:DIMS"),
     (":FP32:4", "NAME:DATATYPE:DIMS"), ("x:FP32:4x0", ">= 1"), ("x:FP99:4", "cannot be generated"),
     ("s:BYTES:4", "cannot be generated; expected one of BOOL"), ("x:FP32:65536x65536", "2\\^24")],
)  # fmt: skip
def test_a_bad_input_flag_says_what_is_expected(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_input(text)


@pytest.mark.parametrize(("flags", "words"), [(["a:FP32:4", "a:INT64:4"], "each name once"),
                                              ([f"x{i}:FP32:1" for i in range(17)], "at most 16 inputs")])
def test_inputs_together_are_checked(flags: list[str], words: str) -> None:
    inputs = tuple(parse_input(f) for f in flags)
    with pytest.raises(ConfigError, match=words):
        LoadConfig(url="http://h:1", model="job0", rate=1, queries=1, qos_ms=720, inputs=inputs).validate()


def test_a_model_of_no_catalogue_entry_needs_its_target() -> None:
    cfg = LoadConfig(url="http://h:1", model="job0", rate=1, queries=1, qos_ms=720).validate()
    assert cfg.inputs == ()  # read from the model's metadata when the run starts
    with pytest.raises(ConfigError, match="--qos MS"):
        LoadConfig(url="http://h:1", model="job0", rate=1, queries=1).validate()


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_encoding_carries_the_rows_shape_and_the_same_values(datatype: str) -> None:
    spec = parse_input(f"t:{datatype}:2x3x4")
    f = PayloadFactory("own", 100.0, inputs=(spec,), max_batch=9)
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    for batch in (1, 5, 9):
        doc = orjson.loads(f.json(batch, "j"))["inputs"][0]
        assert (doc["datatype"], doc["shape"], len(doc["data"])) == (datatype, [batch, 2, 3, 4], batch * 24)
        body, header = f.binary(batch, "b")
        head = orjson.loads(body[:header])["inputs"][0]
        assert head["shape"] == [batch, 2, 3, 4] and len(body) - header == batch * 24 * dtype.itemsize
        msg = pb.ModelInferRequest.FromString(f.grpc(batch, "g"))
        assert list(msg.inputs[0].shape) == [batch, 2, 3, 4] and msg.inputs[0].datatype == datatype
        raw = np.frombuffer(msg.raw_input_contents[0], dtype)
        assert raw.tobytes() == body[header:]
        assert raw.tolist() == np.asarray(doc["data"]).astype(dtype).tolist()
        if dtype.kind in "iu":
            assert raw.min() >= 0 and raw.max() < spec.high


def test_rows_past_the_drawn_ones_repeat_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payloads_module, "MAX_DISTINCT", 64)
    f = PayloadFactory("own", None, inputs=(parse_input("x:FP32:4x4"),), max_batch=10)  # 4 rows drawn
    rows = np.asarray(orjson.loads(f.json(10, "a"))["inputs"][0]["data"]).reshape(10, 16)
    assert np.array_equal(rows[4:8], rows[:4]) and np.array_equal(rows[8:], rows[:2])
    assert len({tuple(r) for r in rows[:4]}) == 4
    raw = np.frombuffer(pb.ModelInferRequest.FromString(f.grpc(10, "g")).raw_input_contents[0], "<f4")
    assert raw.tolist() == rows.astype(np.float32).ravel().tolist()
    assert orjson.loads(f.json(3, "b"))["inputs"][0]["data"] == rows[:3].ravel().tolist()


def test_a_request_too_large_to_hold_is_refused_with_the_way_out() -> None:
    image = parse_input("image:FP32:3x224x224")
    with pytest.raises(ConfigError, match=r"batch of 1000 is 574 MiB .*\(--batch-mix fixed:N"):
        PayloadFactory("resnet", None, inputs=(image,))
    f = PayloadFactory("resnet", None, inputs=(image,), max_batch=8)
    assert len(pb.ModelInferRequest.FromString(f.grpc(8, "g")).raw_input_contents[0]) == 8 * 150528 * 4


def test_the_shipped_models_payloads_are_drawn_as_before() -> None:
    """The same seeded values as the payloads of every earlier run (1,000 rows per input)."""
    rng = np.random.default_rng([0, 7])
    dense = np.round(rng.standard_normal(1000 * 13), 3)
    sparse = rng.integers(0, 100_000, 1000 * 26)
    f = PayloadFactory("rm2", None, max_batch=5)
    msg = pb.ModelInferRequest.FromString(f.grpc(5, "x"))
    assert np.frombuffer(msg.raw_input_contents[0], "<f4").tolist() == dense[: 5 * 13].astype("<f4").tolist()
    assert np.frombuffer(msg.raw_input_contents[1], "<i8").tolist() == sparse[: 5 * 26].tolist()


async def test_inputs_come_from_the_flags_the_catalogue_or_an_answering_endpoint() -> None:
    given = (parse_input("x:FP64:64"),)
    endpoint = parse_url("http://127.0.0.1:1")
    assert await resolve_inputs(endpoint, "digits", given) == given
    assert await resolve_inputs(endpoint, "rm2", ()) == MODEL_INPUTS["rm2"]
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url in (f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"):
        with pytest.raises(TargetUnreachable, match="or give them with --input"):
            await resolve_inputs(parse_url(url), "digits", ())
