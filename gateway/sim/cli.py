"""``kairos-sim``: run the gateway's dispatcher on a virtual clock, once or as a find-max search.

    kairos-sim --model rm2 --qos 350 --pool g4dn.xlarge=1,r5n.large=13 --policy kairos --find-max --json
    kairos-sim --rate 120 --queries 20000            # the pool, model and QoS of config.json

Bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson

from gateway.config import Config, load_config
from gateway.dispatch import OverloadControl
from gateway.errors import ConfigError, KairosError
from gateway.policies import POLICY_NAMES, make_policy
from gateway.profiles import Catalogue, ProfileSet, load_catalogue
from gateway.sim.engine import DEFAULT_WARMUP, default_profiles, simulate
from gateway.sim.events import ADD, parse_events
from gateway.sim.pool import PoolSpec, check_pool, format_pool, parse_pool, pool_cost
from gateway.sim.result import SimResult
from gateway.sim.search import (
    DEFAULT_QUERIES,
    DEFAULT_RESOLUTION,
    DEFAULT_TARGET,
    FindMaxResult,
    Step,
    find_max,
)
from gateway.sim.transport import lognormal_params
from gateway.variants import parse_accuracy
from gateway.workload import load_trace_csv, make_workload, parse_batch_mix
from gateway.workload.arrivals import parse_arrivals

PROG = "kairos-sim"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        print(f"{PROG}: error: {message} (see {PROG} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="The gateway's dispatcher, policies and estimator on a virtual clock.")
    p.add_argument("--config", default="config.json", help="pool, model and QoS when --pool is not given")
    p.add_argument("--model", help="model name (default: the config's)")
    p.add_argument("--qos", type=float, help="QoS target in ms (default: the config's, else the paper's for the model)")
    p.add_argument("--pool", help="TYPE=COUNT[,TYPE=COUNT...], e.g. g4dn.xlarge=1,r5n.large=13 (default: the config's)")
    p.add_argument("--policy", help=f"one of {', '.join(POLICY_NAMES)} (default: the config's)")
    p.add_argument("--depth", type=int, help="queries in flight per instance (default: the config's, else 1)")
    p.add_argument("--rate", type=float, help="arrival rate in queries/s (a single run)")
    p.add_argument("--find-max", action="store_true", help="search the highest rate meeting --target")
    p.add_argument("--queries", type=int, default=DEFAULT_QUERIES, help=f"queries per run (default {DEFAULT_QUERIES})")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrivals and batch sizes (default 0)")
    p.add_argument("--arrivals", default="poisson", help="poisson | integer-poisson | constant (default poisson)")
    p.add_argument("--batch-mix", default="production", help="production | fixed:N | uniform:A-B")
    p.add_argument("--trace", help="CSV trace (timestamp_ms,batch) to replay instead of --arrivals/--batch-mix")
    p.add_argument("--target", type=float, default=DEFAULT_TARGET, help="fraction within QoS (default 0.99)")
    p.add_argument("--resolution", type=float, default=DEFAULT_RESOLUTION,
                   help="find-max: relative width of the final bracket (default 0.01)")
    p.add_argument("--warmup", type=float, default=DEFAULT_WARMUP,
                   help="fraction of the first arrivals left out of the statistics (default 0.1)")
    p.add_argument("--transport-ms", type=float, default=0.0,
                   help="round trip around each service, e.g. the live gateway's measured overhead (default 0)")
    p.add_argument("--transport-p99-ms", type=float, default=None,
                   help="draw each query's round trip, log-normal with mean --transport-ms and this 99th "
                        "percentile (the live gateway's kairos_transport_overhead_p99_seconds), instead of a constant")
    p.add_argument("--pipeline", action="store_true",
                   help="send an instance its next query once its current one has run its estimated service time")
    p.add_argument("--late", choices=("shed", "serve"),
                   help="the gateway's overload control (gateway.late_queries) in a single run: refused and shed "
                        "queries are counted apart (default: neither, every query served)")  # fmt: skip
    p.add_argument("--accuracy", metavar="VARIANT=ACC,...",
                   help="accuracy of each variant in the pool (kinds VARIANT/TYPE); default: the config's")
    p.add_argument("--event", action="append", default=[], metavar="T:ACTION:...",
                   help="a pool change during a single run, repeatable: T:add:TYPE[:STARTUP_MS][:NAME], "
                   "T:drain:NAME, T:remove:NAME (T in ms from the start)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@dataclass(frozen=True, slots=True)
class _Run:
    model: str
    qos: float
    pool: PoolSpec
    policy: str
    depth: int
    profiles: ProfileSet
    catalogue: Catalogue


def _resolve(args: argparse.Namespace) -> _Run:
    """What to simulate, from the flags, falling back on the config (whose own instance types
    and profiles count)."""
    catalogue = load_catalogue()
    profiles = default_profiles()
    config: Config | None = None
    if args.pool is None or args.model is None or args.policy is None or args.depth is None:
        path = Path(args.config)
        if path.exists() or args.pool is None:
            config = load_config(path, catalogue)
            catalogue = config.catalogue or catalogue
            if config.profiles is not None:
                profiles = config.profile_set()
    if args.pool is not None:
        pool = parse_pool(args.pool)
    else:
        assert config is not None
        pool = config.pool_spec()
    model = args.model or (config.model if config else None)
    if model is None:
        _fail("--model is required when there is no config file")
    if args.qos is not None:
        qos = args.qos
    elif config is not None and model == config.model:
        qos = config.qos_ms
    else:
        qos = catalogue.qos(model)
    if not qos > 0:
        _fail(f"--qos: expected a positive number of ms, got {qos:g}")
    policy = args.policy or (config.gateway.policy if config else "kairos")
    make_policy(policy)  # validates the name
    depth = args.depth if args.depth is not None else (config.gateway.depth_per_instance if config else 1)
    if depth < 1:
        _fail(f"--depth: expected an integer >= 1, got {depth}")
    check_pool(pool, model, profiles, catalogue)
    return _Run(model, qos, pool, policy, depth, profiles, catalogue)


def _progress(step: Step) -> None:
    if step.stopped_early:
        what = f"fail: target out of reach {100 * step.completed:.0f}% into the run, stopped"
    else:
        what = (
            f"within QoS {100 * step.within_qos:6.2f}% (last quarter {100 * step.within_qos_last_quarter:6.2f}%)  "
            + ("pass" if step.passed else "fail")
        )
    print(f"  {step.rate:10.2f} QPS  {what}  [{step.wall_s:.2f} s]", file=sys.stderr, flush=True)


def _run_table(res: SimResult) -> str:
    s = res.summary()
    lat = s["latency_ms"]
    lines = [
        f"{res.model} on {format_pool(res.pool)}, policy {res.policy}, QoS {res.qos_ms:g} ms, seed {res.seed}",
        f"queries {res.n_queries} (measured {s['measured_queries']} after a {res.warmup:g} warm-up)",
        f"offered {s['offered_qps']:.2f} QPS, achieved {s['achieved_qps']:.2f} QPS",
        f"within QoS {100 * s['within_qos']:.3f}% (last quarter {100 * s['within_qos_last_quarter']:.3f}%)",
        "latency ms: " + "  ".join(f"{k} {v:.2f}" for k, v in lat.items()),
    ]
    if "accuracy_served" in s:
        lines.append(f"accuracy served {s['accuracy_served']:.4f} (query-weighted, by the variant that served)")
    if "refused" in s:
        lines.append(
            f"refused {s['refused']}, shed {s['shed']}; within QoS of the accepted "
            f"{100 * s['within_qos_of_accepted']:.3f}%"
        )
    lines += [
        "",
        f"{'instance':<22} {'type':<14} {'share':>7} {'busy':>7}",
    ]
    for inst in s["instances"]:
        lines.append(
            f"{inst['name']:<22} {inst['type']:<14} {100 * inst['share']:6.2f}% {100 * inst['busy']:6.2f}%"
        )
    lines.append("")
    for t, share in s["type_share"].items():
        lines.append(f"{t:<14} serves {100 * share:6.2f}% of queries, mean batch {s['type_mean_batch'][t]:.1f}")
    lines.append(f"simulated in {res.wall_s:.2f} s ({res.decisions} policy decisions)")
    return "\n".join(lines)


def _max_table(fm: FindMaxResult, cost: float) -> str:
    lines = [
        f"{fm.model} on {format_pool(fm.pool)} ({cost:.3f} $/h), policy {fm.policy}, QoS {fm.qos_ms:g} ms",
        f"max QPS with >= {100 * fm.target:g}% within QoS: {fm.max_qps:.2f}",
        f"({fm.arrivals} arrivals, {fm.batch_mix} batches, {fm.queries} queries per step, seed {fm.seed}, "
        f"{len(fm.steps)} steps, resolution {100 * fm.resolution:g}%)",
    ]
    if fm.at_max is not None:
        s = fm.at_max.summary()
        lines.append(
            f"at the max: within QoS {100 * s['within_qos']:.2f}%, p99 {s['latency_ms']['p99']:.2f} ms, "
            + ", ".join(f"{t} {100 * v:.1f}%" for t, v in s["type_share"].items())
        )
    return "\n".join(lines)


def _config_accuracy(args: argparse.Namespace, model: str) -> dict[str, float]:
    """The config's variant accuracies when it describes ``model`` (and the config exists)."""
    try:
        config = load_config(args.config)
    except KairosError:
        return {}
    if model not in {m.name for m in config.models}:
        return {}
    return {v.name: v.accuracy for v in config.model_config(model).variants if v.accuracy is not None}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    spec = _resolve(args)
    model, qos, pool, policy, depth = spec.model, spec.qos, spec.pool, spec.policy, spec.depth
    if args.queries < 1:
        _fail(f"--queries: expected a positive integer, got {args.queries}")
    if args.rate is not None and not args.rate > 0:
        _fail(f"--rate: expected a positive number of queries/s, got {args.rate:g}")
    if not 0 <= args.warmup < 1:
        _fail(f"--warmup: expected a fraction in [0, 1), got {args.warmup:g}")
    if not (args.transport_ms >= 0 and math.isfinite(args.transport_ms)):
        _fail(f"--transport-ms: expected a number of ms >= 0, got {args.transport_ms:g}")
    if args.transport_p99_ms is not None:
        try:
            lognormal_params(args.transport_ms, args.transport_p99_ms)
        except ConfigError as exc:
            hint = "" if args.transport_ms > 0 else " (give --transport-ms, the mean, too)"
            _fail(f"--transport-p99-ms: {exc}{hint}")
    transport = {"transport_ms": args.transport_ms, "transport_p99_ms": args.transport_p99_ms}
    mix = parse_batch_mix(args.batch_mix)
    parse_arrivals(args.arrivals, 1.0)  # validates the name
    trace = load_trace_csv(args.trace) if args.trace else None
    cost = pool_cost(pool, spec.catalogue)
    if args.find_max and args.late:
        _fail("--late applies to a single run (--rate), not to --find-max")
    if args.find_max and args.event:
        _fail("--event applies to a single run (--rate), not to --find-max")
    events = parse_events(args.event)
    accuracy = dict(parse_accuracy(args.accuracy)) if args.accuracy else _config_accuracy(args, model)
    for e in events:
        if e.action == ADD and not spec.profiles.has(model, e.type):
            _fail(f"--event: instance type {e.type!r} has no latency profile for {model}")
    if args.find_max:
        if not args.json:
            print(f"find-max: {args.queries if trace is None else len(trace)} queries per step", file=sys.stderr, flush=True)
        fm = find_max(
            model=model, qos_ms=qos, pool=pool, policy=policy, queries=args.queries, seed=args.seed,
            target=args.target, arrivals=args.arrivals, mix=mix, trace=trace, depth=depth,
            resolution=args.resolution, warmup=args.warmup, progress=_progress,
            transport_ms=args.transport_ms, pipeline=args.pipeline, transport_p99_ms=args.transport_p99_ms,
            profiles=spec.profiles,
        )
        out = fm.to_json() | {"cost_per_hour": round(cost, 4)} | transport
        if not args.json:
            print(_max_table(fm, cost))
        return out
    if trace is None:
        if args.rate is None:
            _fail("give --rate QPS (a single run) or --find-max")
        trace = make_workload(parse_arrivals(args.arrivals, args.rate), mix, args.queries, args.seed)
    elif args.rate is not None:  # replay the trace's pattern, time-scaled to the rate
        own = (len(trace) - 1) * 1000.0 / max(trace.duration_ms, 1e-9)
        trace = type(trace)(arrival_ms=trace.arrival_ms * (own / args.rate), batch=trace.batch)
    res = simulate(trace, model=model, qos_ms=qos, pool=pool, policy=policy, seed=args.seed, depth=depth,
                   warmup=args.warmup, transport_ms=args.transport_ms, pipeline=args.pipeline,
                   transport_p99_ms=args.transport_p99_ms, profiles=spec.profiles,
                   overload=OverloadControl.for_mode(args.late, qos) if args.late else None, events=events,
                   accuracy=accuracy)
    if not args.json:
        print(_run_table(res))
    return res.summary() | {"cost_per_hour": round(cost, 4), "target": args.target,
                            "meets_target": res.meets(args.target)} | transport


def main(argv: Sequence[str] | None = None) -> int:
    want_json = "--json" in (sys.argv[1:] if argv is None else argv)
    try:
        out = run(argv)
    except KairosError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if want_json:
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
