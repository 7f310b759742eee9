"""Unit tests of kairos-loadgen: schedule, workload, payloads, report math, JSON schema, search."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import orjson
import pytest

from benchmarks.loadgen import (
    SCHEMA,
    LoadConfig,
    LoadReport,
    Outcome,
    PayloadFactory,
    RunInfo,
    Samples,
    Target,
    build_workload,
    find_max,
    parse_ramp,
    parse_url,
    render_table,
    run_load,
    search_rates,
)
from gateway.errors import ConfigError
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.workload import ConstantArrivals, PoissonArrivals, make_workload, parse_batch_mix


class FakeTarget(Target):
    """No sockets: records when each request is issued and answers after ``latency_s``
    (a function of the batch), or fails batches in ``fail``."""

    def __init__(self, payloads: PayloadFactory, latency_s, fail=()) -> None:
        super().__init__(parse_url("http://127.0.0.1:1"), payloads, 10.0)
        self.latency_s = latency_s
        self.fail = set(fail)
        self.issued: list[tuple[str, float]] = []

    async def open(self, check_timeout_s: float = 5.0) -> None:
        pass

    async def close(self) -> None:
        pass

    async def infer(self, batch: int, request_id: str) -> Outcome:
        self.issued.append((request_id, asyncio.get_running_loop().time()))
        await asyncio.sleep(self.latency_s(batch))
        if batch in self.fail:
            return Outcome("http_503")
        return Outcome(None, f"inst-{batch % 2}")


def _factory(latency_s, fail=()):
    made: list[FakeTarget] = []

    def make(cfg, payloads):
        t = FakeTarget(payloads, latency_s, fail)
        made.append(t)
        return t

    return make, made


# -- schedule ------------------------------------------------------------------------------


async def test_send_times_follow_the_workload_and_never_wait_on_responses():
    cfg = LoadConfig(url="http://127.0.0.1:1", model="ncf", rate=1000.0, queries=300, seed=3, qos_ms=500)
    wl = build_workload(cfg.validate())
    expected = make_workload(PoissonArrivals(1000.0), parse_batch_mix("production"), 300, 3)
    assert np.array_equal(wl.arrival_ms, expected.arrival_ms) and np.array_equal(wl.batch, expected.batch)

    make, made = _factory(lambda b: 0.2)  # 200 ms per response; gaps are ~1 ms
    loop = asyncio.get_running_loop()
    start = loop.time()
    report = await run_load(cfg, target_factory=make)
    elapsed = loop.time() - start
    s = report.samples
    assert s is not None
    # The schedule is exactly the workload's arrival times, in order, one send per query.
    assert np.allclose(s.scheduled_s, expected.arrival_ms / 1000.0)
    assert report.scheduled == report.sent == report.ok == 300
    ids = [rid for rid, _ in made[0].issued]
    assert len(set(ids)) == 300 and [int(r.rsplit("-", 1)[1]) for r in ids] == list(range(300))
    sent = np.asarray(s.sent_s)
    lag = sent - s.scheduled_s
    assert lag.min() >= -1e-3  # never early
    assert np.median(lag) < 0.02
    # Open loop: the whole run is about schedule + one latency, not 300 latencies.
    assert elapsed < s.scheduled_s[-1] + 0.2 + 2.0
    lat = (np.asarray(s.done_s) - s.scheduled_s) * 1000
    assert lat.min() >= 199.0  # latency counted from the scheduled time


def test_workload_for_a_duration_is_make_workload_with_the_count_that_fits():
    cfg = LoadConfig(url="grpc://h:1", model="rm2", rate=200.0, duration_s=2.0, seed=5).validate()
    wl = build_workload(cfg)
    n = len(wl)
    ref = make_workload(PoissonArrivals(200.0), parse_batch_mix("production"), n, 5)
    assert np.array_equal(wl.arrival_ms, ref.arrival_ms) and np.array_equal(wl.batch, ref.batch)
    longer = PoissonArrivals(200.0).times_ms(n + 1, np.random.default_rng([5, 0]))
    assert wl.arrival_ms[-1] <= 2000.0 < longer[-1]
    const = build_workload(
        LoadConfig(url="grpc://h:1", model="rm2", rate=100.0, duration_s=1.0, arrivals="constant").validate()
    )
    assert np.allclose(const.arrival_ms, ConstantArrivals(100.0).times_ms(100, np.random.default_rng(0)))
    capped = build_workload(LoadConfig(url="grpc://h:1", model="rm2", rate=100.0, duration_s=10, queries=7))
    assert len(capped) == 7


def test_ramp_and_trace_workloads(tmp_path):
    assert parse_ramp("30:100,30:300") == ((30.0, 100.0), (30.0, 300.0))
    with pytest.raises(ConfigError):
        parse_ramp("30-100")
    wl = build_workload(LoadConfig(url="http://h:1", model="wnd", ramp=((1.0, 100.0), (1.0, 400.0))).validate())
    first = np.count_nonzero(wl.arrival_ms <= 1000)
    assert wl.arrival_ms[-1] <= 2000 and 60 < first < 140 and 300 < len(wl) - first < 500
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_ms,batch\n10,5\n0,7\n20,9\n")
    wl = build_workload(LoadConfig(url="http://h:1", model="wnd", trace=str(trace)).validate())
    assert wl.arrival_ms.tolist() == [0.0, 10.0, 20.0] and wl.batch.tolist() == [7, 5, 9]


# -- payloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["ncf", "rm2", "wnd", "mtwnd", "dien"])
def test_payloads_have_the_model_shapes_in_every_encoding(model):
    f = PayloadFactory(model, 25.0)
    for batch in (1, 37, 1000):
        j = orjson.loads(f.json(batch, f"r-{batch}"))
        assert j["id"] == f"r-{batch}" and j["parameters"] == {"qos_ms": 25.0}
        for t, spec in zip(j["inputs"], f.specs, strict=True):
            assert t["shape"] == [batch, spec.width] and len(t["data"]) == batch * spec.width
        body, hl = f.binary(batch, "b")
        head = orjson.loads(body[:hl])
        sizes = [t["parameters"]["binary_data_size"] for t in head["inputs"]]
        assert head["inputs"][0]["shape"][0] == batch and hl + sum(sizes) == len(body)
        msg = pb.ModelInferRequest.FromString(f.grpc(batch, "g-1"))
        assert msg.model_name == model and msg.id == "g-1"
        assert msg.parameters["qos_ms"].double_param == 25.0
        assert [list(t.shape) for t in msg.inputs] == [[batch, s.width] for s in f.specs]
        assert [len(r) for r in msg.raw_input_contents] == [batch * s.width * 4 if s.datatype == "FP32"
                                                            else batch * s.width * 8 for s in f.specs]
    # JSON text and raw bytes carry the same values.
    sparse = next(t for t in orjson.loads(f.json(3, "x"))["inputs"] if t["datatype"] == "INT64")
    idx = [s.name for s in f.specs].index(sparse["name"])
    raw = pb.ModelInferRequest.FromString(f.grpc(3, "x")).raw_input_contents[idx]
    assert np.frombuffer(raw, "<i8").tolist() == sparse["data"]


# -- report math ---------------------------------------------------------------------------


def _info(qos: float = 5.0) -> RunInfo:
    return RunInfo("http://h:1", "http", "json", "ncf", qos, "poisson", 10.0, "production", 0)


def _hand_built() -> LoadReport:
    # 10 queries scheduled 0.0..0.9 s; latencies 1..8 ms, query 8 -> http_503, query 9 -> timeout.
    sched = np.arange(10) / 10.0
    lat_ms = [1, 2, 3, 4, 5, 6, 7, 8, 2, 10_000]
    sent = list(sched + np.array([0, 0, 0.001, 0, 0, 0, 0, 0.004, 0, 0]))
    done = list(sched + np.array(lat_ms) / 1000.0)
    error = [None] * 8 + ["http_503", "timeout"]
    instance = ["a", "a", "b", "a", "b", "a", "a", "a", None, None]
    s = Samples(sched, np.ones(10, dtype=int), sent, done, error, instance)
    return LoadReport.from_samples(_info(), s, max_in_flight=3)


def test_report_math_on_hand_built_results():
    r = _hand_built()
    assert (r.scheduled, r.sent, r.ok, r.error_count) == (10, 10, 8, 2)
    assert r.errors == {"http_503": 1, "timeout": 1}
    assert r.within_qos == 5 and r.within_qos_pct == pytest.approx(50.0)  # 1..5 ms of 10 sent
    lat = r.latency_ms
    assert lat is not None
    # Nearest rank over the 8 successes [1..8]: p50 = 4th, p90 = 8th (ceil 7.2), p99 = 8th.
    assert lat["p50"] == pytest.approx(4) and lat["p90"] == pytest.approx(8) and lat["p99"] == pytest.approx(8)
    assert lat["max"] == pytest.approx(8) and lat["mean"] == pytest.approx(4.5)
    assert r.instances == {"a": 6, "b": 2}
    assert r.send_lag_ms is not None and r.send_lag_ms["max"] == pytest.approx(4.0)
    assert r.offered_qps == pytest.approx(10 / 0.9)
    assert r.wall_s == pytest.approx(0.9 + 10.0)
    assert r.achieved_qps == pytest.approx(8 / 10.9)


def test_json_schema_is_stable_and_plain_json():
    j = _hand_built().to_json()
    assert json.loads(json.dumps(j)) == j  # stdlib-serializable: no numpy scalars
    assert j["schema"] == SCHEMA and j["mode"] == "run"
    assert set(j) == {
        "schema", "mode", "target", "workload", "qos_ms", "counts", "offered_qps", "achieved_qps",
        "goodput_qps", "wall_s", "within_qos_pct", "latency_ms", "errors", "first_errors", "instances", "send_lag_ms",
        "class", "variant", "variants", "accuracy_served",
        "max_in_flight", "aborted", "timeline",
    }
    assert set(j["target"]) == {"url", "protocol", "encoding", "model"}
    assert set(j["workload"]) == {"arrivals", "rate_qps", "batch_mix", "seed", "queries", "schedule_s"}
    assert j["counts"] == {"scheduled": 10, "sent": 10, "ok": 8, "errors": 2, "within_qos": 5, "unsent": 0}
    assert set(j["latency_ms"]) == {"p50", "p90", "p99", "p99_9", "max", "mean"}
    assert set(j["send_lag_ms"]) == {"p50", "p95", "max", "mean"}
    assert j["instances"] == {"a": {"count": 6, "share": 0.75}, "b": {"count": 2, "share": 0.25}}
    bins = j["timeline"]["bins"]
    assert sum(b["sent"] for b in bins) == 10 and sum(b["ok"] for b in bins) == 8
    assert set(bins[0]) == {"t_s", "sent", "ok", "achieved_qps", "p50_ms", "p99_ms", "within_qos_pct"}
    table = render_table(_hand_built())
    assert "50.00% of sent" in table and "http_503 1" in table


def test_report_with_nothing_answered():
    s = Samples.empty(np.array([0.1, 0.2]), np.array([1, 1]))
    s.sent_s[:] = [0.1, 0.2]
    s.done_s[:] = [1.1, 1.2]
    s.error[:] = ["connection", "connection"]
    r = LoadReport.from_samples(_info(), s)
    assert r.latency_ms is None and r.within_qos_pct == 0 and r.errors == {"connection": 2}
    assert json.loads(json.dumps(r.to_json()))["latency_ms"] is None


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"url": "ftp://h:1"}, "http://HOST:PORT"),
        ({"url": "http://h"}, "port"),
        ({"rate": 0.0}, "--rate"),
        ({"rate": -3.0}, "--rate"),
        ({"model": "bert"}, "no QoS target for model .bert.*--qos MS"),
        ({"queries": None, "duration_s": None}, "bound"),
        ({"batch_mix": "fixed:0"}, "batch mix"),
        ({"ramp": ((1.0, 5.0),)}, "exactly one"),
    ],
)
def test_bad_config_names_the_flag(kwargs, words):
    base = {"url": "http://h:1", "model": "ncf", "rate": 10.0, "queries": 10}
    with pytest.raises(ConfigError, match=words):
        LoadConfig(**{**base, **kwargs}).validate()


def test_qos_defaults_to_the_model_target():
    assert LoadConfig(url="http://h:1", model="rm2", rate=1, queries=1).validate().qos_ms == 350
    assert LoadConfig(url="http://h:1", model="rm2", rate=1, queries=1, qos_ms=9).validate().qos_ms == 9


# -- run mechanics: QoS accounting, abort --------------------------------------------------


async def test_qos_accounting_and_errors_with_a_fake_target():
    make, _ = _factory(lambda b: 0.05 if b >= 9 else 0.001, fail={1})
    cfg = LoadConfig(url="http://h:1", model="ncf", rate=500.0, queries=200, batch_mix="uniform:1-10", qos_ms=30)
    r = await run_load(cfg, target_factory=make)
    batch = r.samples.batch if r.samples else None
    assert batch is not None
    assert r.sent == r.ok + r.error_count == 200
    assert r.errors == {"http_503": int(np.count_nonzero(batch == 1))}
    assert r.within_qos == int(np.count_nonzero((batch >= 2) & (batch <= 8)))


async def test_abort_after_violations_stops_sending():
    make, _ = _factory(lambda b: 0.05)  # every query misses a 10 ms QoS
    cfg = LoadConfig(url="http://h:1", model="ncf", rate=1000.0, queries=2000, qos_ms=10)
    r = await run_load(cfg, target_factory=make, abort_after_violations=5)
    assert r.aborted and r.sent < 2000 and r.unsent == 2000 - r.sent
    assert r.sent == r.ok + r.error_count


async def test_find_max_brackets_and_bisects(monkeypatch):
    # A system whose capacity is 300 q/s: steps above it fail, below pass.
    import benchmarks.loadgen.search as search

    calls: list[float] = []

    async def fake_run_load(cfg, *, abort_after_violations=None, **_):
        calls.append(cfg.rate)
        n = cfg.queries
        ok = n if cfg.rate <= 300 else int(n * 0.9)
        s = Samples.empty(np.arange(n) / cfg.rate, np.ones(n, dtype=int))
        s.sent_s[:] = list(s.scheduled_s)
        s.done_s[:] = list(s.scheduled_s + np.where(np.arange(n) < ok, 0.001, 1.0))
        s.error[:] = [None] * n
        return LoadReport.from_samples(_info(5.0), s)

    monkeypatch.setattr(search, "run_load", fake_run_load)
    cfg = LoadConfig(url="http://h:1", model="ncf", rate=100.0)
    res = await find_max(cfg, step_queries=200, pause_s=0, resolution=0.02)
    assert 300 * 0.98 <= res.max_qps <= 300
    assert calls[:3] == [100, 200, 400]
    assert all(s.passed == (s.rate_qps <= 300) for s in res.steps)
    j = res.to_json(cfg)
    assert j["mode"] == "find_max" and j["max_qps"] == round(res.max_qps, 3) and j["step_queries"] == 200
    assert j["best"]["mode"] == "run" and json.loads(json.dumps(j)) == j
    down = await find_max(LoadConfig(url="http://h:1", model="ncf", rate=1000.0), step_queries=100, pause_s=0)
    assert 285 <= down.max_qps <= 300


async def test_search_rates_finds_any_steps_capacity_within_the_resolution_and_step_budget():
    tried: list[float] = []

    async def below(capacity: float):
        async def step(rate: float) -> bool:
            tried.append(rate)
            return rate <= capacity

        return step

    found = await search_rates(await below(437.0), 100.0, resolution=0.03, min_qps=1.0, max_qps=1e6, max_steps=24)
    assert 437.0 * 0.97 <= found <= 437.0 and tried[:4] == [100.0, 200.0, 400.0, 800.0]
    tried.clear()
    assert await search_rates(await below(0.5), 100.0, resolution=0.03, min_qps=30.0, max_qps=1e6, max_steps=24) == 0
    assert tried == [100.0, 50.0]  # gives up below min_qps
    tried.clear()
    capped = await search_rates(await below(437.0), 100.0, resolution=0.001, min_qps=1.0, max_qps=1e6, max_steps=5)
    assert len(tried) == 5 and capped == 400.0


def test_percentile_convention_is_nearest_rank():
    # 1000 values 1..1000: p99 must be 990 (the 990th), p99.9 the 999th.
    v = np.arange(1, 1001, dtype=float)
    s = Samples(np.zeros(1000), np.ones(1000, dtype=int), [0.0] * 1000, list(v / 1000), [None] * 1000,
                [None] * 1000)
    lat = LoadReport.from_samples(_info(qos=2000), s).latency_ms
    assert lat is not None and lat["p99"] == pytest.approx(990) and lat["p99_9"] == pytest.approx(999)
    assert math.isclose(lat["p50"], 500)


def test_class_variant_and_accuracy_flags() -> None:
    from benchmarks.loadgen.cli import build_parser, config_from_args
    from gateway.variants import parse_accuracy

    assert parse_accuracy("rm2=0.8,rm2-small=0.7") == (("rm2", 0.8), ("rm2-small", 0.7))
    for bad in ("rm2", "rm2=1.5", "rm2=x", "=0.5"):
        with pytest.raises(ConfigError, match="--accuracy"):
            parse_accuracy(bad)
    args = build_parser().parse_args(["--url", "http://h:1", "--model", "rm2", "--rate", "1", "--class", "premium"])
    assert config_from_args(args).service_class == "premium"
    bad = build_parser().parse_args(["--url", "http://h:1", "--model", "rm2", "--rate", "1", "--variant", "a b"])
    with pytest.raises(ConfigError, match="--variant"):
        config_from_args(bad)
    factory = PayloadFactory("rm2", 350.0, service_class="premium", variant="rm2-small")
    assert json.loads(factory.json(1, "x"))["parameters"] == {"qos_ms": 350.0, "class": "premium", "variant": "rm2-small"}
    proto = pb.ModelInferRequest.FromString(factory.grpc(1, "x"))
    assert proto.parameters["class"].string_param == "premium" and proto.parameters["qos_ms"].double_param == 350.0


# -- a common start (--start-at) -----------------------------------------------------------------


async def test_start_at_holds_the_schedule_until_then_and_a_far_or_bad_time_is_refused() -> None:
    import time

    make, made = _factory(lambda b: 0.001)
    start_at = time.time() + 0.6
    cfg = LoadConfig(url="http://h:1", model="ncf", rate=200.0, queries=20, qos_ms=50, start_at=start_at)
    report = await run_load(cfg, target_factory=make)
    assert report.ok == 20
    first = made[0].issued[0][1]
    loop_now = asyncio.get_running_loop().time()
    # the first query went out no earlier than start_at (on the loop's clock: now - (wall now - start_at))
    assert first >= loop_now - (time.time() - start_at) - 0.01
    for bad in (math.nan, time.time() + 3 * 86_400):
        with pytest.raises(ConfigError, match="--start-at"):
            LoadConfig(url="http://h:1", model="ncf", rate=1, queries=1, start_at=bad).validate()
