"""``kairos-loadgen``: open-loop load against any V2 endpoint (the gateway, an instance, a peer).

Exit codes: 0 done; 2 bad input (one line on stderr); 1 the endpoint could not be reached, or more
queries failed than ``--max-error-rate`` allows (the first errors are printed with the server's text).
"""

from __future__ import annotations

from gateway.grpc_runtime import apply_defaults

apply_defaults()  # this entry point's process setting, before anything imports grpc

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import orjson

from benchmarks.loadgen.config import ARRIVAL_KINDS, LoadConfig, parse_ramp
from benchmarks.loadgen.inputs import parse_input
from benchmarks.loadgen.render import plot_report, render_find_max, render_table
from benchmarks.loadgen.report import LoadReport
from benchmarks.loadgen.runner import run_async, run_load
from benchmarks.loadgen.search import FindMaxResult, FindMaxStep, find_max
from benchmarks.loadgen.transport import TargetUnreachable
from gateway.config import check_model_name
from gateway.errors import ConfigError
from gateway.variants import parse_accuracy

PROG = "kairos-loadgen"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Open-loop load generator for V2 (KServe) inference endpoints. Send times come from "
        "the arrival process, never from responses; latency is measured from the scheduled send time.",
    )
    p.add_argument("--url", required=True, help="http://HOST:PORT (HTTP/REST) or grpc://HOST:PORT (gRPC)")
    p.add_argument("--model", required=True, help="model name: ncf, rm2, wnd, mtwnd, dien, or any other the endpoint serves")
    p.add_argument("--start-at", type=float, metavar="UNIX_S",
                   help="start the schedule at this Unix time (seconds; at once if past): several generators together")
    p.add_argument("--input", action="append", metavar="NAME:DATATYPE:DIMS", default=[],
                   help="an input of a model outside those five, DIMS one row's shape: x:FP64:64, image:FP32:3x224x224 "
                        "(repeat for several; default: the inputs the model's metadata lists; kairos-servers "
                        "emulates such a model with input0:FP32:WIDTH)")
    p.add_argument("--rate", type=float, help="mean arrival rate, queries/s (start of the search with --find-max)")
    p.add_argument("--duration", type=float, metavar="S", help="send for S seconds of arrivals")
    p.add_argument("--queries", type=int, metavar="N", help="send N queries (with --duration: whichever ends first)")
    p.add_argument("--qos", type=float, metavar="MS", help="latency target in ms (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times and batch sizes (default 0)")
    p.add_argument("--arrivals", choices=ARRIVAL_KINDS, default="poisson",
                   help="gaps between arrivals: exponential (poisson), whole ms drawn from a Poisson "
                        "(integer-poisson, the paper's harness), or equal (constant); default poisson")
    p.add_argument("--ramp", metavar="S:QPS,...", help='piecewise Poisson rate, e.g. "30:100,30:300"')
    p.add_argument("--batch-mix", default="production", help="production | fixed:N | uniform:A-B")
    p.add_argument("--trace", metavar="CSV", help="replay a trace with columns timestamp_ms,batch")
    p.add_argument("--binary", action="store_true", help="HTTP: binary tensor extension instead of JSON")
    p.add_argument(
        "--routing-headers", action="store_true",
        help="send kairos-model, kairos-batch (and kairos-class) headers: for Envoy with kairos-gateway --mode epp",
    )  # fmt: skip
    p.add_argument("--protocol", choices=("http", "grpc"), help="must match the URL scheme (which decides)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per-request timeout (default 10)")
    p.add_argument("--connections", type=int, default=1000, help="HTTP connection pool size (default 1000)")
    p.add_argument("--no-qos-param", action="store_true", help="do not send qos_ms as a request parameter")
    p.add_argument("--class", dest="service_class", metavar="NAME", help="service class to send (request parameter class)")
    p.add_argument("--variant", metavar="NAME", help="pin a model variant (request parameter variant)")
    p.add_argument(
        "--accuracy", metavar="VARIANT=ACC,...",
        help="accuracy of each variant, to report the accuracy served (answers name their variant)",
    )  # fmt: skip
    p.add_argument("--max-error-rate", type=_fraction, default=0.0, metavar="F",
                   help="exit 1 when more than this fraction of queries fail or go unsent (default 0; "
                        "a run only, not --find-max)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write one JSON object to PATH (stdout without PATH)")
    p.add_argument("--plot", metavar="PNG", help="latency CDF and timeline (for --find-max: of the best step)")
    p.add_argument("--quiet", action="store_true", help="no progress line, no table")
    s = p.add_argument_group("--find-max")
    s.add_argument("--find-max", action="store_true", help="search the highest rate meeting --target within QoS")
    s.add_argument("--target", type=float, default=0.99, help="fraction of queries within QoS (default 0.99)")
    s.add_argument("--step-queries", type=int, default=2000, help="queries per search step (default 2000)")
    s.add_argument("--step-duration", type=float, metavar="S", help="instead: S seconds of arrivals per step")
    s.add_argument("--resolution", type=float, default=0.05, help="stop when (hi-lo)/hi <= this (default 0.05)")
    s.add_argument("--pause", type=float, default=1.0, metavar="S", help="pause between steps (default 1 s)")
    s.add_argument(
        "--min-rate", type=float, default=1.0, metavar="QPS",
        help="stop halving below this rate: max 0 means no rate >= QPS meets the target (default 1)",
    )  # fmt: skip
    return p


def _fraction(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return x


def too_many_errors(report: LoadReport, max_rate: float) -> str | None:
    """The message for a run whose failed or unsent queries pass ``max_rate``, else None."""
    bad = report.error_count + report.unsent
    if not report.scheduled or bad / report.scheduled <= max_rate:
        return None
    lines = [f"{PROG}: {bad:,} of {report.scheduled:,} queries failed or went unsent "
             f"({bad / report.scheduled:.1%}, more than --max-error-rate {max_rate:g}); first errors:"]
    lines += [f"  {text}" for text in report.first_errors] or ["  (none recorded: the run was aborted)"]
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    if args.protocol is not None and not args.url.startswith(f"{args.protocol}://"):
        raise ConfigError(f"--protocol {args.protocol} does not match --url {args.url}; the URL scheme decides")
    return LoadConfig(
        url=args.url,
        model=args.model,
        rate=args.rate,
        duration_s=args.duration,
        queries=args.queries,
        qos_ms=args.qos,
        seed=args.seed,
        arrivals=args.arrivals,
        ramp=parse_ramp(args.ramp) if args.ramp else None,
        batch_mix=args.batch_mix,
        trace=args.trace,
        binary=args.binary,
        timeout_s=args.timeout,
        connections=args.connections,
        progress=not args.quiet,
        send_qos=not args.no_qos_param,
        service_class=check_model_name(args.service_class, "--class") if args.service_class else None,
        variant=check_model_name(args.variant, "--variant") if args.variant else None,
        accuracy=parse_accuracy(args.accuracy) if args.accuracy else (),
        routing_headers=args.routing_headers,
        inputs=tuple(parse_input(text) for text in args.input),
        start_at=args.start_at,
    )


def _emit_json(obj: dict[str, Any], dest: str) -> None:
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n"
    if dest == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        with open(dest, "wb") as fh:
            fh.write(data)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The table goes to stdout, or to stderr when stdout carries the JSON.
    table_out = sys.stderr if args.json == "-" else sys.stdout
    try:
        config = config_from_args(args)
        if args.find_max:
            if not (math.isfinite(args.min_rate) and args.min_rate > 0):
                raise ConfigError(f"--min-rate {args.min_rate:g}: expected a positive rate")
            if args.start_at is not None:
                raise ConfigError("--start-at: only for one run, not with --find-max (its steps run one after another)")
            def on_step(step: FindMaxStep) -> None:
                if not args.quiet:
                    j = step.to_json()
                    print(
                        f"step {step.rate_qps:,.1f} q/s: {j['within_qos_pct']:.2f}% within QoS, "
                        f"p99 {j['p99_ms']} ms -> {'pass' if step.passed else 'fail'}",
                        file=sys.stderr,
                    )

            if not args.quiet:
                rule = f"{args.step_duration:g} s of arrivals" if args.step_duration else f"{args.step_queries} queries"
                print(f"find-max: {rule} per step, >= {100 * args.target:g}% within QoS to pass", file=sys.stderr)
            result: FindMaxResult = run_async(
                find_max(
                    config,
                    target=args.target,
                    step_queries=args.step_queries,
                    step_duration_s=args.step_duration,
                    resolution=args.resolution,
                    pause_s=args.pause,
                    min_qps=args.min_rate,
                    on_step=on_step,
                )
            )
            if not args.quiet:
                print(render_find_max(result), file=table_out)
            if args.json is not None:
                _emit_json(result.to_json(config.validate(need_source=False)), args.json)
            best = result.best
            if args.plot and best is not None:
                plot_report(best.report, args.plot)
        else:
            report: LoadReport = run_async(run_load(config))
            if not args.quiet:
                print(render_table(report), file=table_out)
            if args.json is not None:
                _emit_json(report.to_json(), args.json)
            if args.plot:
                plot_report(report, args.plot)
            failed = too_many_errors(report, args.max_error_rate)
            if failed:
                print(failed, file=sys.stderr)
                return 1
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TargetUnreachable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
