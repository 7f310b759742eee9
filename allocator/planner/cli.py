"""``kairos-plan``: which instances, how many and which variants, for every model and class.

  kairos-plan REQUEST.json [--json] [--plot PNG]       solve one plan request (docs/planner.md)
  kairos-plan --from-config config.json --load 100     write the request from a gateway config, solve it
  kairos-plan serve [--host H] [--port P]              POST /plan, GET /health over HTTP

Exit codes: 0 a plan; 1 no plan meets the request (the reason on stderr); 2 a malformed request or
argument (the field named).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from allocator.planner.from_config import parse_loads, request_from_config
from allocator.planner.plan import make_plan
from allocator.planner.report import format_plan, plot_plan
from allocator.planner.request import OBJECTIVES, parse_plan_request
from allocator.planner.service import ServiceOptions, make_app
from allocator.planner.solve import PlanInfeasible
from gateway.config import load_config
from gateway.errors import KairosError
from gateway.jsonfile import read_json_file
from gateway.profiles import load_profiles
from gateway.usage import plain

PROG = "kairos-plan"


def _counts(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, spec.split(",")):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected TYPE=N[,TYPE=N...], got {part!r}")
        out[name.strip()] = int(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__.splitlines()[0]),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=plain(__doc__.split("\n", 2)[2]))
    p.add_argument("request", nargs="?", type=Path, help="a plan request (JSON); or use --from-config")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also draw the plan")
    p.add_argument("--refine", action="store_true",
                   help="trim the plan in the simulator (the request's refine: true; docs/planner.md)")
    src = p.add_argument_group("writing the request from a gateway config")
    src.add_argument("--from-config", type=Path, metavar="CONFIG", help="the config's models, classes, variants and pool")
    src.add_argument("--load", action="append", default=[], metavar="[MODEL[/CLASS]=]QPS",
                     help="load to plan for (repeatable); a bare QPS applies to every model's default class")
    src.add_argument("--objective", choices=OBJECTIVES, default="min_cost", help="what to optimise (default min_cost)")
    src.add_argument("--cost-weight", type=float, default=0.0, help="accuracy: points per $/hour; utility: tie-break")
    src.add_argument("--fairness", type=float, default=0.0, help="utility: 0 total, 1 the worst class, between: a mix")
    src.add_argument("--mix", default="production", help="batch mix: production | fixed:N | uniform:LO-HI")
    src.add_argument("--max", type=_counts, default={}, metavar="TYPE=N,...", help="instances of each type that exist")
    src.add_argument("--budget", type=float, metavar="USD_PER_HOUR", help="a cap on the cost per hour")
    src.add_argument("--write-request", type=Path, metavar="PATH", help="write the request to PATH (and still solve it)")
    return p


# The flags that write a request from a config: meaningless beside a request file.
_CONFIG_FLAGS = ("load", "objective", "cost_weight", "fairness", "mix", "max", "budget", "write_request")


def build_serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} serve", description="the planner over HTTP: POST /plan, GET /health")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8010, help="port (default 8010)")
    p.add_argument("--workers", type=int, default=1, help="plans solved at once (default 1)")
    p.add_argument("--max-time", type=float, default=30.0, metavar="S", help="cap on a plan's time limit (default 30 s)")
    p.add_argument("--max-memory", type=float, default=4.0, metavar="GIB",
                   help="memory one solve may take, in GiB (default 4; a plan past it is a 413)")
    return p


def _serve(argv: list[str]) -> int:
    args = build_serve_parser().parse_args(argv)
    if not 0 <= args.port <= 65535 or args.workers < 1 or not args.max_time > 0 or not 1 <= args.max_memory <= 1024:
        print(f"{PROG}: error: --port 0..65535, --workers >= 1, --max-time > 0 and --max-memory 1..1024 GiB",
              file=sys.stderr)
        return 2
    from aiohttp import web

    app = make_app(load_profiles(), ServiceOptions(workers=args.workers, max_time_s=args.max_time,
                                                   max_memory_bytes=int(args.max_memory * 2**30)))
    print(f"{PROG}: serving POST /plan on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    # A client that leaves cancels its handler, and so its solve: abandoned solves held the
    # workers (503 busy for the others) for up to --max-time each.
    web.run_app(app, host=args.host, port=args.port, print=None, handle_signals=True, handler_cancellation=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    profiles = load_profiles()
    if args.from_config is not None:
        if args.request is not None:
            raise KairosError("give a request file or --from-config, not both")
        config = load_config(args.from_config)
        profiles = config.profile_set()
        if not args.load:
            raise KairosError("--from-config needs --load [MODEL[/CLASS]=]QPS")
        objective = {"kind": args.objective, "cost_weight": args.cost_weight, "fairness": args.fairness}
        raw = request_from_config(config, parse_loads(args.load, config), objective=objective, mix=args.mix,
                                  available=args.max, budget=args.budget)
        if args.write_request is not None:
            args.write_request.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2) + b"\n")
            print(f"wrote {args.write_request}", file=sys.stderr)
    elif args.request is not None:
        parser = build_parser()
        given = [f"--{d.replace('_', '-')}" for d in _CONFIG_FLAGS if getattr(args, d) != parser.get_default(d)]
        if given:  # a request file says all of these itself
            raise KairosError(f"{', '.join(given)}: only with --from-config (a request file gives its own loads, "
                              "objective, batch mix, types[].available and budget_per_hour)")
        raw = read_json_file(args.request, "plan request")
    else:
        raise KairosError("give a plan request file, --from-config CONFIG or the serve command")
    if args.refine and isinstance(raw, dict) and not raw.get("refine"):
        raw = {**raw, "refine": True}
    plan = make_plan(parse_plan_request(raw, profiles))
    if args.json:
        sys.stdout.write(orjson.dumps(plan.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_plan(plan))
    if args.plot is not None:
        plot_plan(plan, args.plot, str(args.request or args.from_config))
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except PlanInfeasible as exc:
        print(f"{PROG}: no plan: {exc}", file=sys.stderr)
        return 1
    except KairosError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
