"""The control loop against real processes: kairos-servers and kairos-gateway on loopback, the
embedded pool actuator starting and stopping instances through both admin APIs while queries
flow (each answered, none lost), the collector reading the gateway's metrics, the loop growing
the pool under load and shrinking it after, and the command's exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.inputs import json_body
from helpers.pool import RunningPool, start_pool

from allocator.autoscale.actuator import GroupKey, GroupState
from allocator.autoscale.cli import (
    arg_problem,
    build_parser,
    finish_retirements,
    planned_policy,
    startup_delays,
)
from allocator.autoscale.cli import main as autoscale_main
from allocator.autoscale.collector import GatewayCollector, IncompleteMetrics, parse_metrics, window_between
from allocator.autoscale.forecast import make_forecaster
from allocator.autoscale.loop import ControlLoop, LoopSettings, template_from_config
from allocator.autoscale.planned import PlannedPolicy
from allocator.autoscale.pool_actuator import PoolActuator, PoolActuatorError
from allocator.planner.plan import make_plan
from allocator.planner.request import parse_plan_request
from benchmarks.processes import GatewayProcess, start_gateway
from gateway.config import load_config

pytestmark = pytest.mark.slow
MODEL, TYPE = "rm2", "r5n.large"
KEY = GroupKey(MODEL, MODEL, TYPE)


def gateway_config(directory: Path, pool: RunningPool) -> Path:
    inst = pool.instances[0]
    doc = {
        "model": MODEL,
        "qos_ms": 5000,
        "instances": [{"name": inst.name, "type": inst.type, "http": inst.http, "grpc": inst.grpc}],
        "gateway": {"http_port": 0, "grpc_port": 0, "admin_port": 0, "probe_interval_s": 0.2, "late_queries": "serve"},
    }
    path = directory / "config.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[tuple[RunningPool, GatewayProcess, str, str]]:
    with start_pool(tmp_path / "pool", pool={TYPE: 1}, model=MODEL, admin_port=0) as pool:
        servers_admin = pool.ready_line.rsplit("; admin ", 1)[1].strip()
        gw = start_gateway(gateway_config(tmp_path, pool), [], tmp_path)
        try:
            gateway_admin = "http://" + gw.ready_line.rsplit(" admin=", 1)[1].split()[0]
            yield pool, gw, servers_admin, gateway_admin
        finally:
            assert gw.stop(signal.SIGTERM) == 0


async def load(s: aiohttp.ClientSession, gw: GatewayProcess, stop: asyncio.Event, rate: float,
               codes: Counter[Any], ids: Counter[str]) -> None:
    """Open-loop queries at ``rate`` per second until ``stop``; every answer's code and id counted
    (a query that got no answer counts under its error's name, with the gateway's log kept)."""
    async def one(i: int) -> None:
        try:
            async with s.post(f"{gw.url}/v2/models/{MODEL}/infer", data=json_body(MODEL, 4, id=f"q{i}")) as resp:
                codes[resp.status] += 1
                if resp.status == 200:
                    ids[(await resp.json())["id"]] += 1
        except aiohttp.ClientError as exc:
            codes[f"{type(exc).__name__} (gateway log: {gw.stderr()[-2000:]!r})"] += 1

    tasks, i = [], 0
    while not stop.is_set():
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(1.0 / rate)
    await asyncio.gather(*tasks)


async def wait_for(actuator: PoolActuator, ready: int, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await actuator.groups()).get(KEY) is None or (await actuator.groups())[KEY].ready != ready:
        assert loop.time() < deadline, await actuator.groups()
        await asyncio.sleep(0.1)


async def test_the_actuator_starts_and_stops_instances_while_every_query_is_answered_once(stack: Any) -> None:
    pool, gw, servers_admin, gateway_admin = stack
    async with aiohttp.ClientSession() as s:
        actuator = PoolActuator(s, servers_admin, gateway_admin, startup_delay_s={TYPE: 0.5}, drain_poll_s=0.05,
                                release_s=1.0)
        assert (await actuator.groups())[KEY].ready == 1
        stop, codes, ids = asyncio.Event(), Counter[Any](), Counter[str]()
        traffic = asyncio.create_task(load(s, gw, stop, 40.0, codes, ids))
        await actuator.scale(KEY, 3)
        state = (await actuator.groups())[KEY]
        assert state.committed == 3 and state.starting == 2  # loading: not serving yet
        await wait_for(actuator, 3)
        await asyncio.sleep(0.5)
        await actuator.scale(KEY, 1)
        assert (await actuator.groups())[KEY].draining == 2
        await actuator.settle()
        assert (await actuator.groups())[KEY].draining == 2  # stopped, their units not yet free (release_s)
        await wait_for(actuator, 1)
        await asyncio.sleep(1.0)
        assert (await actuator.groups())[KEY] == GroupState(1, 0, 0)
        stop.set()
        await traffic
        async with s.get(f"{servers_admin}/admin/instances") as resp:
            left = [i["name"] for i in (await resp.json())["instances"]]
        assert left == [pool.instances[0].name]  # the run-time ones went first and were stopped
        assert set(codes) == {200} and sum(codes.values()) > 20
        assert all(n == 1 for n in ids.values()) and len(ids) == codes[200]


async def test_an_instance_that_never_serves_is_stuck_after_the_start_timeout_and_retired_first(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, servers_admin, gateway_admin = stack
    async with aiohttp.ClientSession() as s:
        actuator = PoolActuator(s, servers_admin, gateway_admin, startup_delay_s={TYPE: 3000.0}, drain_poll_s=0.05,
                                start_timeout_s=0.0)
        await actuator.scale(KEY, 2)  # one that loads for 50 minutes
        assert (await actuator.groups())[KEY] == GroupState(ready=1, starting=1)
        actuator.startup_by_type[TYPE] = 0.4  # what it was given; it has not served for longer
        await asyncio.sleep(0.6)
        assert (await actuator.groups())[KEY] == GroupState(ready=1, starting=1, unschedulable=1)
        assert sum("has not served for" in r.getMessage() for r in caplog.records) == 1
        await actuator.groups()
        assert sum("has not served for" in r.getMessage() for r in caplog.records) == 1  # said once
        stuck = next(iter(actuator.stuck))
        await actuator.scale(KEY, 2)  # the policy asks for the group's placed count and more
        await actuator.scale(KEY, 1)
        assert set(actuator.retiring) == {stuck}  # the stuck one goes, not the one serving
        await actuator.settle()
        assert (await actuator.groups())[KEY] == GroupState(ready=1)
        assert not actuator.stuck and not actuator.not_serving_since


async def test_an_unreachable_admin_api_is_a_clear_error() -> None:
    async with aiohttp.ClientSession() as s:
        actuator = PoolActuator(s, "http://127.0.0.1:9", "http://127.0.0.1:9")
        with pytest.raises(PoolActuatorError, match=r"127\.0\.0\.1:9"):
            await actuator.groups()


def metrics_text(requests: float, count: float, total_s: float, late: float, pending: float,
                 shed: float = 0.0, full: float = 0.0) -> str:
    return "\n".join([
        "# TYPE kairos_requests counter", f'kairos_requests_total{{model="m",code="200",protocol="http"}} {requests}',
        "# TYPE kairos_request_duration_seconds histogram",
        f'kairos_request_duration_seconds_bucket{{model="m",class="default",protocol="http",le="+Inf"}} {count}',
        f'kairos_request_duration_seconds_count{{model="m",class="default",protocol="http"}} {count}',
        f'kairos_request_duration_seconds_sum{{model="m",class="default",protocol="http"}} {total_s}',
        "# TYPE kairos_qos_violations counter", f'kairos_qos_violations_total{{model="m",class="default"}} {late}',
        "# TYPE kairos_refusals counter",
        f'kairos_refusals_total{{model="m",class="default",reason="shed"}} {shed}',
        f'kairos_refusals_total{{model="m",class="default",reason="queue_full"}} {full}',
        "# TYPE kairos_pending_queries gauge", f'kairos_pending_queries{{model="m"}} {pending}', ""])


def test_the_collector_reads_windows_as_differences_between_scrapes() -> None:
    a = parse_metrics(metrics_text(100, 90, 9.0, 2, 0, shed=1, full=4))
    b = parse_metrics(metrics_text(160, 150, 21.0, 5, 7, shed=3, full=6))
    w = window_between(a, b, "m")
    # over target: 3 late or failed (2 of them shed: already violations) + 2 refused at admission
    assert (w.arrivals, w.completed, w.over_target, w.queued) == (60, 60, 5, 7)
    assert w.latency_sum_ms == pytest.approx(12_000.0)
    assert window_between(b, a, "m").arrivals == 100  # a restarted gateway: counted from zero
    assert window_between(None, a, "other").arrivals == 0


@contextlib.asynccontextmanager
async def metrics_server(bodies: Iterator[str]) -> AsyncIterator[str]:
    """A /metrics that answers ``bodies`` in turn; its URL."""
    from aiohttp import web

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=next(bodies))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    finally:
        await runner.cleanup()


async def test_the_collectors_first_scrape_is_a_baseline_and_windows_carry_their_seconds() -> None:
    """The first scrape's totals are the gateway's whole past: no window. Then one window per
    scrape, with the seconds between the two."""
    totals = [(36_000, 30.0), (36_050, 33.0), (36_250, 45.0)]
    now = iter([100.0, 110.0, 140.0])
    async with metrics_server(metrics_text(n, n, busy, 0, 0) for n, busy in totals) as url, \
            aiohttp.ClientSession() as s:
        collector = GatewayCollector(s, url, clock=lambda: next(now))
        assert await collector.collect(["m"]) is None
        first = await collector.collect(["m"])
        second = await collector.collect(["m"])
    assert first is not None and second is not None
    assert (first.windows["m"].arrivals, first.seconds) == (50, 10.0)
    assert (second.windows["m"].arrivals, second.seconds) == (200, 30.0)


async def test_a_scrape_without_the_models_series_fails_its_tick_and_keeps_the_baseline() -> None:
    """A 200 that is not the gateway's metrics (a proxy's page, an empty body): read as zeros, it
    made the next window the gateway's whole past (a plan for 13,000 q/s from 20)."""
    bodies = iter([metrics_text(36_000, 36_000, 30.0, 0, 0), "", "<html>502 Bad Gateway</html>",
                   metrics_text(36_040, 36_040, 34.0, 0, 0).replace('model="m"', 'model="other"'),
                   metrics_text(36_080, 36_080, 38.0, 0, 0)])
    now = iter([100.0, 130.0])  # read with each scrape that counts
    async with metrics_server(bodies) as url, aiohttp.ClientSession() as s:
        collector = GatewayCollector(s, url, clock=lambda: next(now))
        assert await collector.collect(["m"]) is None
        for _ in range(3):
            with pytest.raises(IncompleteMetrics, match=r"no kairos_pending_queries series of m|not Prometheus"):
                await collector.collect(["m"])
        after = await collector.collect(["m"])
    assert after is not None
    assert (after.windows["m"].arrivals, after.seconds) == (80, 30.0)  # since the last good scrape


async def test_the_loop_grows_the_pool_under_load_and_shrinks_it_after(stack: Any, tmp_path: Path) -> None:
    _, gw, servers_admin, gateway_admin = stack
    config = load_config(tmp_path / "config.json")
    policy = PlannedPolicy(template_from_config(config, {"kind": "min_cost"}), make_forecaster("last"),
                           {KEY: 0.1}, profiles=config.profile_set(), plan_every_s=1.0, step_s=1.0, horizon_s=1.0,
                           down_after_s=2.0, max_down=4)
    async with aiohttp.ClientSession() as s:
        actuator = PoolActuator(s, servers_admin, gateway_admin, drain_poll_s=0.05)
        control = ControlLoop(policy, GatewayCollector(s, f"{gw.url}/metrics"), actuator, {MODEL: 5000.0},
                              LoopSettings(tick_s=0.5, max_change=4))
        stop_loop, stop_load = asyncio.Event(), asyncio.Event()
        codes, ids = Counter[Any](), Counter[str]()
        running = asyncio.create_task(control.run(stop_loop))
        traffic = asyncio.create_task(load(s, gw, stop_load, 60.0, codes, ids))  # about 3 r5n.large of work
        await asyncio.sleep(6.0)
        grown = (await actuator.groups())[KEY].committed
        stop_load.set()
        await traffic
        await asyncio.sleep(6.0)
        stop_loop.set()
        await running
        await actuator.settle()
        final = (await actuator.groups())[KEY]
    ups = [d for d in control.decisions if d.after > d.before]
    downs = [d for d in control.decisions if d.after < d.before]
    assert grown >= 2 and ups and ups[0].reason
    assert downs and final.committed < grown
    assert set(codes) == {200} and all(n == 1 for n in ids.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [("35", 35.0), ("0", 0.0), ("g4dn.xlarge=60,r5n.large=2.5", {"g4dn.xlarge": 60.0, "r5n.large": 2.5})],
)
def test_start_up_delays_are_one_for_all_or_per_type(text: str, expected: object) -> None:
    assert startup_delays(text) == expected


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "x", "=5", "a=1,b", "a=-2", ""])
def test_a_bad_start_up_delay_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="TYPE=S"):
        startup_delays(text)


def test_the_command_names_a_bad_config_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    out = subprocess.run([sys.executable, "-m", "allocator.autoscale", "--config", str(bad), "--gateway", "http://x",
                          "--gateway-admin", "http://x", "--servers-admin", "http://x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "kairos-autoscale:" in out.stderr


async def test_a_start_the_gateway_refuses_is_stopped_and_reported(stack: Any) -> None:
    """The servers can emulate dien, the gateway serves only rm2: the new instance would run outside
    the pool, unseen and uncounted, so the actuator stops it and raises."""
    _, _, servers_admin, gateway_admin = stack
    async with aiohttp.ClientSession() as s:
        actuator = PoolActuator(s, servers_admin, gateway_admin)
        with pytest.raises(PoolActuatorError, match="admin/instances"):
            await actuator.scale(GroupKey("dien", "dien", TYPE), 1)
        async with s.get(f"{servers_admin}/admin/instances") as resp:
            left = [i["model"] for i in (await resp.json())["instances"]]
    assert left == [MODEL]


_LOOP_ARGS = ["--gateway", "http://x", "--gateway-admin", "http://x", "--servers-admin", "http://x"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--cap", "0"], "--cap 0"), (["--cap", "2"], "--cap 2: the config's pool already holds 3"),
     (["--fairness", "1.5"], "--fairness 1.5"), (["--fairness", "0.5"], "--fairness: only with --objective utility"),
     (["--batch-mix", "fixed:0"], "--batch-mix"), (["--max-utilisation", "0"], "--max-utilisation"),
     (["--release-after", "-1"], "--release-after -1"), (["--release-after", "5"], "--release-after: only with --cap"),
     (["--tick", "nan"], "--tick nan"), (["--plan-every", "0"], "--plan-every 0"), (["--duration", "-5"], "--duration"),
     (["--metrics-port", "70000"], "--metrics-port"), (["--start-at", "nan"], "--start-at"),
     (["--start-at", "9e12"], "--start-at"), (["--down-after", "-1"], "--down-after -1"),
     (["--down-after", "nan"], "--down-after nan"),
     (["--gateway", "127.0.0.1:8000"], "--gateway '127.0.0.1:8000': expected http://HOST:PORT"),
     (["--servers-admin", "http://h:99999"], "--servers-admin 'http://h:99999': the port"),
     (["--gateway-admin", "http://h:8002/admin"], "--gateway-admin 'http://h:8002/admin': expected http://HOST:PORT, with no path"),
     (["--tick", "0.001"], "--tick 0.001: expected at least 0.1 s"), (["--start-timeout", "0"], "--start-timeout 0.0"),
     (["--start-timeout", "nan"], "--start-timeout nan"), (["--decide-timeout", "-1"], "--decide-timeout -1.0"),
     (["--tick", "10", "--step", "15"], "--step 15: expected a whole multiple of --tick (10 s)"),
     (["--horizon", "1e300"], "--horizon 1e+300: expected at most 604800 s"),
     (["--step", "1", "--tick", "1", "--horizon", "86400"], "--horizon 86400: expected at most 10080 steps of 1 s")],
)
def test_a_bad_loop_flag_is_a_usage_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    flags: list[str], named: str) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model": MODEL, "pool": [{"type": TYPE, "count": 3}]}))
    with pytest.raises(SystemExit) as exc:
        autoscale_main(["--config", str(cfg), *_LOOP_ARGS, *flags])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith(f"kairos-autoscale: {named}")


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--startup-delay", "35"], "--startup-delay: only with --servers-admin"),
     (["--cap", "5", "--release-after", "30"], "--release-after: only with --servers-admin")],
)
def test_pool_only_flags_with_kubernetes_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          flags: list[str], named: str) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model": MODEL, "pool": [{"type": TYPE, "count": 3}]}))
    with pytest.raises(SystemExit) as exc:
        autoscale_main(["--config", str(cfg), "--gateway", "http://x", "--gateway-admin", "http://x",
                        "--kubernetes", "ns", *flags])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith(f"kairos-autoscale: {named}")


@pytest.mark.parametrize("value", ["7200", "g4dn.xlarge=60,r5n.large=3601"])
def test_a_startup_delay_kairos_servers_would_refuse_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--config", "c.json", *_LOOP_ARGS, "--startup-delay", value])
    assert exc.value.code == 2 and "with seconds in [0, 3600]" in capsys.readouterr().err


def test_a_loop_that_never_reaches_the_pool_exits_1_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model": MODEL, "pool": [{"type": TYPE, "count": 3}]}))
    closed = "http://127.0.0.1:9"  # discard: nothing listens
    with pytest.raises(SystemExit) as exc:
        autoscale_main(["--config", str(cfg), "--gateway", closed, "--gateway-admin", closed, "--servers-admin", closed,
                        "--tick", "0.2", "--duration", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "error: no tick could read the pool and the gateway's metrics" in err


def test_a_step_of_whole_ticks_given_rounded_passes(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model": MODEL, "pool": [{"type": TYPE, "count": 3}]}))
    args = build_parser().parse_args(["--config", str(cfg), *_LOOP_ARGS, "--tick", "0.666667", "--step", "4"])
    assert arg_problem(args, load_config(cfg)) is None  # 10 s and 60 s compressed 15x, as printed


def test_good_loop_flags_pass_the_checks(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model": MODEL, "pool": [{"type": TYPE, "count": 3}]}))
    args = build_parser().parse_args(["--config", str(cfg), *_LOOP_ARGS, "--cap", "3", "--release-after", "30",
                                      "--objective", "utility", "--fairness", "0.5", "--max-utilisation", "1",
                                      "--duration", "60", "--metrics-port", "9500", "--start-at", str(time.time())])
    assert arg_problem(args, load_config(cfg)) is None


def test_refine_makes_the_loops_plans_refined_in_the_simulator() -> None:
    repo = Path(__file__).resolve().parents[3]
    config = load_config(repo / "config.json")
    base = ["--config", str(repo / "config.json"), "--gateway", "http://x", "--gateway-admin", "http://x",
            "--servers-admin", "http://x"]
    loads = {m.name: 20.0 for m in config.models}
    plain = planned_policy(build_parser().parse_args(base), config).template(loads, [])
    refined = planned_policy(build_parser().parse_args([*base, "--refine"]), config).template(loads, [])
    assert "refine" not in plain and refined["refine"] is True
    plan = make_plan(parse_plan_request({**refined, "refine": {"queries": 2000}}, config.profile_set()))
    assert plan.refinement is not None and all(c.basis == "simulation" for c in plan.classes)


async def _names(s: aiohttp.ClientSession, admin: str) -> dict[str, str]:
    async with s.get(f"{admin}/admin/instances") as resp:
        return {i["name"]: i["state"] for i in (await resp.json())["instances"]}


async def _until(check: Any, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline
        await asyncio.sleep(0.1)


async def test_the_actuator_repairs_an_instance_the_gateway_forgot_and_one_left_draining(stack: Any) -> None:
    """A run-time instance the gateway no longer knows (a restarted gateway) is added back; one
    left draining (a retirement cut short, this process restarted) is retired: gone from both."""
    pool, _, servers_admin, gateway_admin = stack
    async with aiohttp.ClientSession() as s:
        actuator = PoolActuator(s, servers_admin, gateway_admin, drain_poll_s=0.05)
        await actuator.scale(KEY, 3)
        await wait_for(actuator, 3)
        forgot, left = [n for n in await _names(s, servers_admin) if n != pool.instances[0].name]
        async with s.delete(f"{gateway_admin}/admin/instances/{forgot}") as resp:
            assert resp.status == 200
        async with s.post(f"{gateway_admin}/admin/instances/{left}/drain") as resp:
            assert resp.status == 200
        assert forgot not in await _names(s, gateway_admin)
        state = (await actuator.groups())[KEY]
        assert state.committed == 2 and state.draining == 1  # forgot: back, loading; left: retiring
        await actuator.settle()
        await wait_for(actuator, 2)
        assert set(await _names(s, servers_admin)) == set(await _names(s, gateway_admin)) == {
            pool.instances[0].name, forgot}


async def test_a_retirement_goes_on_after_an_admin_call_fails(stack: Any) -> None:
    """The gateway's removal fails once (a timeout on a loaded host): the retirement tries again
    and the instance is stopped, not left draining and running for good."""
    pool, _, servers_admin, gateway_admin = stack

    class Flaky(PoolActuator):
        failed = 0

        async def _call(self, method: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
            if method == "DELETE" and url.startswith(self.gateway + "/") and not self.failed:
                self.failed += 1
                raise PoolActuatorError(f"{method} {url}: timed out")
            return await super()._call(method, url, ok, **kw)

    async with aiohttp.ClientSession() as s:
        actuator = Flaky(s, servers_admin, gateway_admin, drain_poll_s=0.05)
        await actuator.scale(KEY, 2)
        await wait_for(actuator, 2)
        await actuator.scale(KEY, 1)
        await actuator.settle(timeout_s=20.0)
        assert actuator.failed == 1 and actuator.retiring == {}
        assert list(await _names(s, servers_admin)) == list(await _names(s, gateway_admin)) == [pool.instances[0].name]
        assert (await actuator.groups())[KEY] == GroupState(1, 0, 0)


async def test_a_gateway_entry_of_a_rolled_back_start_is_removed(stack: Any) -> None:
    """The gateway applied an add whose answer was lost: the start is rolled back, the gateway's
    entry removed with it (else the servers' next instance of that name would clash there)."""
    _, _, servers_admin, gateway_admin = stack

    class LostAnswer(PoolActuator):
        async def _call(self, method: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
            body = await super()._call(method, url, ok, **kw)
            if method == "POST" and url == self.gateway:
                raise PoolActuatorError(f"{method} {url}: timed out")  # after the gateway applied it
            return body

    async with aiohttp.ClientSession() as s:
        with pytest.raises(PoolActuatorError, match="timed out"):
            await LostAnswer(s, servers_admin, gateway_admin).scale(KEY, 2)
        assert len(await _names(s, gateway_admin)) == len(await _names(s, servers_admin)) == 1
        actuator = PoolActuator(s, servers_admin, gateway_admin)
        await actuator.scale(KEY, 2)  # the same name again: no clash
        await wait_for(actuator, 2)


async def test_an_instance_that_failed_to_boot_is_stopped_and_replaced() -> None:
    """The servers report a start that failed (its port taken meanwhile, say): it is retired, not
    counted, and a scale to 2 starts one more. The admin APIs are recorded here, not run."""

    class Recorded(PoolActuator):
        def __init__(self, session: aiohttp.ClientSession) -> None:
            super().__init__(session, "http://servers", "http://gateway", drain_poll_s=0.01)
            self.calls: list[tuple[str, str]] = []
            self.servers_list = [
                {"name": "pool-0", "model": MODEL, "type": TYPE, "http": "h", "grpc": "g", "state": "ready", "origin": "pool"},
                {"name": "run-1", "model": MODEL, "type": TYPE, "http": "h", "grpc": "g", "state": "failed",
                 "origin": "runtime"},
            ]
            self.gateway_list = {"pool-0": {"name": "pool-0", "state": "healthy"},
                                 "run-1": {"name": "run-1", "state": "unhealthy"}}

        async def _instances(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
            return [dict(i) for i in self.servers_list], dict(self.gateway_list)

        async def _call(self, method: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
            self.calls.append((method, url))
            if method == "POST" and url == self.servers:
                return {"name": "run-2", "http": "h2", "grpc": "g2"}
            return {"state": "removed"} if method == "DELETE" else {}

    async with aiohttp.ClientSession() as s:
        actuator = Recorded(s)
        assert (await actuator.groups())[KEY] == GroupState(1, 0, 1)  # the failed one: leaving
        await actuator.scale(KEY, 2)
        await actuator.settle(timeout_s=5.0)
    assert ("POST", "http://gateway/admin/instances/run-1/drain") in actuator.calls
    assert ("DELETE", "http://servers/admin/instances/run-1") in actuator.calls
    assert actuator.calls.count(("POST", "http://servers/admin/instances")) == 1  # run-2, for run-1


VARIANTS = [{"name": MODEL, "accuracy": 0.8}, {"name": "wnd", "accuracy": 0.7}]


async def test_the_actuator_starts_and_retires_a_variants_instances(tmp_path: Path) -> None:
    """A plan's variant group (rm2's smaller wnd) is started as the variant, with the model's inputs,
    counted in its own group, known to the gateway as the variant, and retired."""
    from benchmarks.processes import start_servers

    servers_doc = {"models": [{"name": MODEL, "qos_ms": 5000, "variants": VARIANTS, "pool": [{"type": TYPE, "count": 1}]}],
                   "servers": {"http_port": 0, "grpc_port": 0, "admin_port": 0,
                               "address_file": str(tmp_path / "instances.json")}}
    (tmp_path / "servers.json").write_text(json.dumps(servers_doc))
    pool = start_servers(tmp_path / "servers.json", tmp_path / "instances.json", [], tmp_path)
    try:
        inst = pool.instances[0]
        gateway_doc = {"models": [{"name": MODEL, "qos_ms": 5000, "variants": VARIANTS, "instances": [
            {"name": inst.name, "type": inst.type, "http": inst.http, "grpc": inst.grpc}]}],
            "gateway": {"http_port": 0, "grpc_port": 0, "admin_port": 0, "probe_interval_s": 0.2}}
        (tmp_path / "gateway.json").write_text(json.dumps(gateway_doc))
        gw = start_gateway(tmp_path / "gateway.json", [], tmp_path)
        try:
            servers_admin = pool.ready_line.rsplit("; admin ", 1)[1].strip()
            gateway_admin = "http://" + gw.ready_line.rsplit(" admin=", 1)[1].split()[0]
            wnd = GroupKey(MODEL, "wnd", TYPE)
            async with aiohttp.ClientSession() as s:
                actuator = PoolActuator(s, servers_admin, gateway_admin, drain_poll_s=0.05)
                assert await actuator.groups() == {KEY: GroupState(1)}
                await actuator.scale(wnd, 1)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while (await actuator.groups()).get(wnd) != GroupState(1):
                    assert loop.time() < deadline, await actuator.groups()
                    await asyncio.sleep(0.1)
                assert (await actuator.groups())[KEY] == GroupState(1)  # the model's own group untouched
                known = await actuator.pool.instances()
                (name,) = [n for n, i in known.items() if i.get("variant") == "wnd"]
                async with s.get(f"{servers_admin}/admin/instances") as resp:
                    listed = {i["name"]: i for i in (await resp.json())["instances"]}
                assert (listed[name]["model"], listed[name]["variant"]) == (MODEL, "wnd")
                # It serves the variant with the model's inputs.
                async with s.post(f"{listed[name]['http']}/v2/models/wnd/infer", data=json_body(MODEL, 4)) as resp:
                    assert resp.status == 200, await resp.text()
                await actuator.scale(wnd, 0)
                await actuator.settle()
                assert wnd not in await actuator.groups()
        finally:
            assert gw.stop(signal.SIGTERM) == 0
    finally:
        pool.stop()


async def test_a_second_signal_while_stopping_leaves_the_retirements_to_the_next_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Stopping waits for the retirements under way (up to the drain timeout and 30 s), saying
    so; a second Ctrl-C leaves them at once (before, it was ignored for up to 150 s, silently)."""
    async with aiohttp.ClientSession() as s:
        actuator = PoolActuator(s, "http://127.0.0.1:9", "http://127.0.0.1:9")
        again = asyncio.Event()
        await asyncio.wait_for(finish_retirements(actuator, again), 1.0)  # nothing retiring: at once
        assert capsys.readouterr().err == ""
        stuck = asyncio.get_running_loop().create_task(asyncio.sleep(3600))  # a drain that never ends
        actuator.retiring["m-1"] = KEY
        actuator.tasks.add(stuck)
        asyncio.get_running_loop().call_later(0.2, again.set)
        started = time.monotonic()
        await asyncio.wait_for(finish_retirements(actuator, again), 5.0)
    assert time.monotonic() - started < 2.0 and stuck.cancelled()
    assert "waiting up to 150 s for 1 instance(s) to drain and stop (m-1); signal again" in capsys.readouterr().err
