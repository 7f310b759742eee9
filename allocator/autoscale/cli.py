"""``kairos-autoscale``: the control loop against a running gateway and its pool.

  kairos-autoscale --config config.json --gateway http://127.0.0.1:8000 \\
      --gateway-admin http://127.0.0.1:8002 --servers-admin http://127.0.0.1:9400
  kairos-autoscale --config config.json --gateway http://kairos-gateway:8000 \\
      --gateway-admin http://kairos-gateway-admin:8002 --kubernetes kairos

Every tick (default 10 s) it reads the gateway's /metrics, and every plan period (default 30 s) it
forecasts each model's load as quantiles and plans the pool (objective min_cost by default); it
starts instances through kairos-servers' admin API (or scales the managed Deployments, with
--kubernetes), adds them to the gateway, and drains and stops the ones it removes. Every
decision is logged with its reason; --metrics-port serves them. Stop it with Ctrl-C (SIGINT) or
SIGTERM. Exit codes: 0 stopped, 1 a runtime failure, 2 bad
arguments or config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from allocator.autoscale.actuator import Actuator, GroupKey
from allocator.autoscale.admin_api import GatewayPool
from allocator.autoscale.collector import GatewayCollector
from allocator.autoscale.forecast import DEFAULT_FORECASTER, FORECASTERS, LEVELS, make_forecaster
from allocator.autoscale.loop import ControlLoop, LoopSettings, service_times, template_from_config
from allocator.autoscale.planned import PlannedPolicy
from allocator.autoscale.pool_actuator import PoolActuator
from allocator.planner.request import OBJECTIVES
from gateway.admin import TOKEN_ENV
from gateway.clock import start_at_problem
from gateway.config import Config, load_config
from gateway.errors import KairosError
from gateway.usage import plain
from gateway.workload import parse_batch_mix
from servers.admin import MAX_STARTUP_DELAY_S

PROG = "kairos-autoscale"


MIN_TICK_S = 0.1
MAX_PERIOD_S = 7 * 86400.0
MAX_HORIZON_STEPS = 10_080  # a week of minutes


def startup_delays(text: str) -> float | dict[str, float]:
    """``35`` for every type, or ``g4dn.xlarge=60,r5n.large=35`` per type."""
    try:
        if "=" not in text:
            return _non_negative(float(text))
        out = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            if not name.strip():
                raise ValueError
            out[name.strip()] = _non_negative(float(value))
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds or TYPE=S,... with seconds in [0, {MAX_STARTUP_DELAY_S:g}], got {text!r}") from None


def _non_negative(x: float) -> float:
    if not 0 <= x <= MAX_STARTUP_DELAY_S:  # kairos-servers refuses more: every start would fail
        raise ValueError
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__.splitlines()[0]),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=plain(__doc__.split("\n", 2)[2]))
    p.add_argument("--config", type=Path, required=True, help="the gateway's config: models, classes, catalogue")
    p.add_argument("--gateway", required=True, metavar="URL", help="the gateway's HTTP address (its /metrics)")
    p.add_argument("--gateway-admin", required=True, metavar="URL", help="the gateway's admin API")
    pool = p.add_mutually_exclusive_group(required=True)
    pool.add_argument("--servers-admin", metavar="URL", help="kairos-servers' admin API (the emulated pool)")
    pool.add_argument("--kubernetes", metavar="NAMESPACE", nargs="?", const="",
                      help="scale the managed Deployments of NAMESPACE (default: the pod's own) and register their "
                           "pods with the gateway (allocator/autoscale/kubernetes.py; needs kairos-gateway[kubernetes])")
    p.add_argument("--tick", type=float, default=10.0, metavar="S", help="collect and react every S seconds (default 10)")
    p.add_argument("--plan-every", type=float, default=30.0, metavar="S", help="plan every S seconds (default 30)")
    p.add_argument("--step", type=float, default=60.0, metavar="S", help="the forecaster's step (default 60 s)")
    p.add_argument("--horizon", type=float, default=120.0, metavar="S", help="plan for the peak this far ahead (default 120 s)")
    p.add_argument("--forecaster", choices=FORECASTERS, default=DEFAULT_FORECASTER, help=f"default {DEFAULT_FORECASTER}")
    p.add_argument("--objective", choices=OBJECTIVES, default="min_cost", help="what the plans optimise (default min_cost)")
    p.add_argument("--load-quantile", type=float, default=0.9, metavar="Q",
                   help="plan for this quantile of the forecast (default 0.9; lower: cheaper, the reactive step guards)")
    p.add_argument("--fairness", type=float, default=0.0, metavar="F",
                   help="the utility objective's weight on the worst model's share (0: total, 1: fairest; default 0)")
    p.add_argument("--batch-mix", default="production", metavar="MIX",
                   help="the queries' batch sizes, for plans: production, fixed:N or uniform:LO-HI (default production)")
    p.add_argument("--cap", type=int, metavar="N",
                   help="hold at most N instances in all (starting, serving, draining, releasing); default no cap")
    p.add_argument("--refine", action="store_true",
                   help="planned: refine each least-cost plan in the simulator (seconds a plan; docs/planner.md)")
    p.add_argument("--max-utilisation", type=float, metavar="U",
                   help="plans load each group to at most this share of its capacity (default the planner's, 0.9)")
    p.add_argument("--release-after", type=float, default=0.0, metavar="S",
                   help="a stopped instance still counts against --cap for S seconds (default 0)")
    p.add_argument("--max-change", type=int, default=4, metavar="N", help="instances per group per tick, at most (default 4)")
    p.add_argument("--down-after", type=float, default=120.0, metavar="S",
                   help="shrink a group only once plans have wanted less for S seconds (default 120)")
    p.add_argument("--measure", type=float, default=30.0, metavar="S",
                   help="plans never go below the rate measured over the last S seconds (default 30)")
    p.add_argument("--startup-delay", type=startup_delays, default=0.0, metavar="S|TYPE=S,...",
                   help="emulated model loading of each new instance: seconds, for all or per type")
    p.add_argument("--decide-timeout", type=float, metavar="S",
                   help="a decision (a plan: seconds with --refine) still running after S skips its tick "
                        "(default two ticks)")
    p.add_argument("--start-timeout", type=float, metavar="S",
                   help="an instance not serving this long after its start-up is stuck: planned around and replaced "
                        "(default 300 s; 600 s with --kubernetes, from the pod's Ready turning false)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until stopped)")
    p.add_argument("--start-at", type=float, metavar="UNIX_S",
                   help="begin the first tick's window at this Unix time (seconds; at once if past), as a load replay does")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve the loop's metrics on 127.0.0.1:PORT")
    return p


def planned_policy(args: argparse.Namespace, config: Config) -> PlannedPolicy:
    """The policy the command runs, from its arguments; it starts from the config's pool (a
    simulation of the same loop starts there too)."""
    objective: dict[str, Any] = {"kind": args.objective, "load_quantile": args.load_quantile}
    if args.objective == "utility":
        objective["fairness"] = args.fairness
    template = template_from_config(config, objective, mix=args.batch_mix, max_units=args.cap,
                                    max_utilisation=args.max_utilisation, refine=args.refine)
    initial = {GroupKey(m.name, e.variant or m.name, e.type): e.count for m in config.models for e in m.pool if e.count}
    return PlannedPolicy(template, make_forecaster(args.forecaster), service_times(config, args.batch_mix),
                         profiles=config.profile_set(), plan_every_s=args.plan_every, step_s=args.step,
                         horizon_s=args.horizon, down_after_s=args.down_after, measure_s=args.measure,
                         initial=initial, log=logging.getLogger(PROG).info)


async def run(args: argparse.Namespace, config: Config) -> int:
    policy = planned_policy(args, config)
    stop, again = asyncio.Event(), asyncio.Event()  # a signal; a second one while stopping
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (again if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    if args.start_at is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(args.start_at - time.time(), 0.0))
    if args.duration:
        loop.call_later(args.duration, stop.set)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        token = os.environ.get(TOKEN_ENV) or None  # the admin APIs' bearer token, if they want one
        start_timeout = {} if args.start_timeout is None else {"start_timeout_s": args.start_timeout}
        actuator: Actuator
        if args.kubernetes is not None:
            from allocator.autoscale.kubernetes import KubernetesActuator

            actuator = KubernetesActuator(args.kubernetes or None,
                                          gateway=GatewayPool(session, args.gateway_admin, token), **start_timeout)
        else:
            actuator = PoolActuator(session, args.servers_admin, args.gateway_admin, startup_delay_s=args.startup_delay,
                                    release_s=args.release_after, token=token, **start_timeout)
        control = ControlLoop(policy, GatewayCollector(session, args.gateway.rstrip("/") + "/metrics"), actuator,
                              {m.name: m.qos_ms for m in config.models},
                              LoopSettings(args.tick, args.max_change, args.cap, args.decide_timeout))
        runner = None
        if args.metrics_port is not None:
            async def metrics(_: web.Request) -> web.Response:
                return web.Response(body=generate_latest(control.metrics.registry), content_type="text/plain")

            app = web.Application()
            app.router.add_get("/metrics", metrics)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", args.metrics_port).start()
        try:
            await control.run(stop)
            if isinstance(actuator, PoolActuator):
                await finish_retirements(actuator, again)
        finally:
            if runner is not None:
                await runner.cleanup()
    print(f"{PROG}: stopped after {control.decision_count} decisions", file=sys.stderr)
    if control.ticks_failed and not control.ticks_read:
        print(f"{PROG}: error: no tick could read the pool and the gateway's metrics ({control.ticks_failed} tried; "
              f"last: {control.last_error})", file=sys.stderr)
        return 1
    return 0


async def finish_retirements(actuator: PoolActuator, again: asyncio.Event) -> None:
    """Wait for the retirements under way (drain, remove, stop), up to the drain timeout and
    30 s; a second signal leaves them at once. What is left, the next run finishes."""
    if not actuator.retiring:
        return
    limit = actuator.drain_timeout_s + 30.0
    print(f"{PROG}: stopping: waiting up to {limit:.0f} s for {len(actuator.retiring)} instance(s) to drain and stop "
          f"({', '.join(sorted(actuator.retiring))}); signal again to leave them to the next run", file=sys.stderr)
    settling = asyncio.ensure_future(actuator.settle(limit))
    interrupted = asyncio.ensure_future(again.wait())
    await asyncio.wait([settling, interrupted], return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    if not settling.done():
        settling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await settling
        await actuator.settle(0.0)  # names what is left and cancels it


def arg_problem(args: argparse.Namespace, config: Config) -> str | None:
    """The first flag with a bad value, as a one-line message naming it; None if all are good."""
    for flag in ("tick", "plan_every", "step", "horizon", "measure"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value > 0):
            return f"--{flag.replace('_', '-')} {value:g}: expected a positive number of seconds"
        if value > MAX_PERIOD_S:
            return f"--{flag.replace('_', '-')} {value:g}: expected at most {MAX_PERIOD_S:g} s (a week)"
    steps = args.step / args.tick
    kubernetes = args.kubernetes is not None
    pool = sum(e.count for m in config.models for e in m.pool)
    checks = [
        (args.tick >= MIN_TICK_S, f"--tick {args.tick:g}: expected at least {MIN_TICK_S:g} s (each tick reads both admin APIs)"),
        (round(steps) >= 1 and abs(steps - round(steps)) <= 0.01 * round(steps),  # printed rounded, as 10/15 s
         f"--step {args.step:g}: expected a whole multiple of --tick ({args.tick:g} s): the forecaster counts whole ticks"),
        (args.horizon / args.step <= MAX_HORIZON_STEPS,
         f"--horizon {args.horizon:g}: expected at most {MAX_HORIZON_STEPS} steps of {args.step:g} s"),
        (not kubernetes or args.startup_delay == 0.0,
         "--startup-delay: only with --servers-admin (Kubernetes starts its pods as their specs say)"),
        (0.0 <= args.down_after < 1e9, f"--down-after {args.down_after:g}: expected seconds in [0, 1e9)"),
        (args.max_change >= 1, f"--max-change {args.max_change}: expected at least 1"),
        (LEVELS[0] <= args.load_quantile <= LEVELS[-1],
         f"--load-quantile {args.load_quantile:g}: expected a level in [{LEVELS[0]:g}, {LEVELS[-1]:g}] (the forecast's)"),
        (0.0 <= args.fairness <= 1.0, f"--fairness {args.fairness:g}: expected a weight in [0, 1]"),
        (args.fairness == 0.0 or args.objective == "utility", "--fairness: only with --objective utility"),
        (args.cap is None or 1 <= args.cap <= 1_000_000, f"--cap {args.cap}: expected 1 to 1000000 instances"),
        (args.cap is None or pool <= args.cap, f"--cap {args.cap}: the config's pool already holds {pool} instances"),
        (0.0 <= args.release_after < 1e6, f"--release-after {args.release_after:g}: expected seconds in [0, 1e6)"),
        (args.release_after == 0.0 or args.cap is not None, "--release-after: only with --cap (it counts against it)"),
        (args.release_after == 0.0 or not kubernetes,
         "--release-after: only with --servers-admin (a pod holds its node until it is gone)"),
        (args.max_utilisation is None or 0.05 <= args.max_utilisation <= 1.0,
         f"--max-utilisation {args.max_utilisation}: expected a share in [0.05, 1]"),
        (args.duration is None or (math.isfinite(args.duration) and args.duration > 0),
         f"--duration {args.duration}: expected a positive number of seconds"),
        (args.decide_timeout is None or 0 < args.decide_timeout <= MAX_PERIOD_S,
         f"--decide-timeout {args.decide_timeout}: expected seconds in (0, {MAX_PERIOD_S:g}]"),
        (args.start_timeout is None or 0 < args.start_timeout <= MAX_PERIOD_S,
         f"--start-timeout {args.start_timeout}: expected seconds in (0, {MAX_PERIOD_S:g}]"),
        (args.metrics_port is None or 1 <= args.metrics_port <= 65535, f"--metrics-port {args.metrics_port}: expected 1-65535"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    for flag in ("gateway", "gateway_admin", "servers_admin"):
        if (url := getattr(args, flag)) is not None and (problem := _url_problem(url)):
            return f"--{flag.replace('_', '-')} {url!r}: {problem}"
    return start_at_problem(args.start_at) if args.start_at is not None else None


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return "the port is not a number in 1-65535"
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return "expected http://HOST:PORT"
    if parts.query or parts.fragment or parts.path.strip("/"):
        return "expected http://HOST:PORT, with no path"
    return None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
    except KairosError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(2)
    if problem := arg_problem(args, config):
        print(f"{PROG}: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        parse_batch_mix(args.batch_mix)
    except KairosError as exc:
        print(f"{PROG}: --batch-mix: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(asyncio.run(run(args, config)))
    except (OSError, KairosError) as exc:  # a port in use; no Kubernetes configuration
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        print(f"{PROG}: {exc}: --kubernetes needs the kubernetes client (pip install 'kairos-gateway[kubernetes]')",
              file=sys.stderr)
        sys.exit(1)
