"""``kairos-allocate``: which pool to rent for a model, under a budget or for a load.

  kairos-allocate --model rm2 --budget 2.5          rank pools by the paper's bound (and fluid limit)
  kairos-allocate --model rm2 --load 100            the cheapest pool carrying 100 QPS with 20% headroom
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from allocator.pool import Candidate
from allocator.problem import Problem, build_problem
from allocator.report import format_table, plot, to_json, write_config
from allocator.search import Ranking, rank_by_budget, size_for_load
from allocator.space import SearchSpace, catalogue_space, load_search_space
from allocator.validate import SimSettings, SimulatorUnavailable, pick_validated, validate
from gateway.config import load_config
from gateway.errors import ConfigError, KairosError
from gateway.profiles import Catalogue, load_catalogue, load_profiles
from gateway.usage import plain
from gateway.workload import parse_batch_mix


def _parse_max(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, spec.split(",")):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected TYPE=N[,TYPE=N...], got {part!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kairos-allocate", description=plain(__doc__.splitlines()[0]), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="model name (ncf, rm2, wnd, mtwnd, dien; default: --config's model)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--budget", type=float, metavar="USD_PER_HOUR", help="rank pools within this cost (default: the space's)")
    goal.add_argument("--load", type=float, metavar="QPS", help="size the cheapest pool for this arrival rate")
    p.add_argument("--headroom", type=float, default=0.2, help="with --load: spare capacity required (default 0.2 = 20%%)")
    p.add_argument("--qos", type=float, metavar="MS", help="latency target (default: the model's, from the catalogue)")
    p.add_argument(
        "--space", default="paper", metavar="paper|catalogue|profiled|PATH",
        help="search space: the paper's 4 types (default), every catalogue type, the types the model has "
        "profiles for, or a JSON file",
    )
    p.add_argument("--max", type=_parse_max, default={}, metavar="TYPE=N,...", help="override per-type maxima")
    p.add_argument(
        "--config", type=Path, metavar="PATH",
        help="take the instance types a gateway config declares and its profiles (with --space catalogue or profiled)",
    )
    p.add_argument("--mix", default="production", help="batch mix: production | fixed:N | uniform:LO-HI")
    p.add_argument("--method", choices=("auto", "enumerate", "milp"), default="auto", help="budget-mode search")
    p.add_argument("--top", type=int, default=5, metavar="K", help="how many pools to show (default 5)")
    p.add_argument("--json", action="store_true", help="print the ranked pools as JSON")
    p.add_argument("--plot", type=Path, metavar="PATH", help="write a cost-vs-throughput PNG")
    p.add_argument(
        "--write-config", nargs="?", const=Path("config.json"), type=Path, metavar="PATH",
        help="write the pick's counts into the pool of a config file (default config.json)",
    )
    p.add_argument("--validate", type=int, default=0, metavar="K", help="run the top K through kairos-sim --find-max")
    p.add_argument("--sim-seed", type=int, default=0, help="seed passed to kairos-sim")
    p.add_argument("--sim-queries", type=int, help="queries per simulated run (kairos-sim --queries)")
    p.add_argument("--sim-policy", default="kairos", help="policy for kairos-sim (default kairos)")
    return p


def _space(spec: str, budget: float | None, catalogue: Catalogue, profiled: list[str]) -> SearchSpace:
    if spec == "profiled":
        if not profiled:
            raise ConfigError("--space profiled: the model has no latency profile on any type (give --config)")
        return catalogue_space(catalogue, budget, only=profiled)
    if spec == "paper":
        return load_search_space(catalogue)
    if spec == "catalogue":
        return catalogue_space(catalogue, budget)
    return load_search_space(catalogue, Path(spec))


def _run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise KairosError(f"--top must be >= 1, got {args.top}")
    if args.validate < 0:
        raise KairosError(f"--validate must be >= 0, got {args.validate}")
    catalogue, profiles = load_catalogue(), load_profiles()
    qos = args.qos
    if args.config is not None:
        config = load_config(args.config)
        catalogue, profiles = config.catalogue or catalogue, config.profile_set()
        if args.model is None:
            variants = [v for v in config.primary.variant_names if profiles.types(v)]
            if not profiles.types(config.model) and variants:
                raise KairosError(f"--model: {config.model!r} runs as its variants; name one ({', '.join(variants)})")
            args.model = config.model
        if qos is None and args.model in (config.model, *config.primary.variant_names):
            qos = config.qos_ms
    if args.model is None:
        raise KairosError("--model: which model to allocate for (ncf, rm2, wnd, mtwnd, dien), or --config for its model")
    space = _space(args.space, args.budget, catalogue, profiles.types(args.model)).with_max(args.max)
    problem: Problem = build_problem(
        args.model, space, profiles, catalogue, qos_ms=qos, mix=parse_batch_mix(args.mix)
    )
    if args.load is not None:
        ranking = size_for_load(problem, args.load, args.headroom, top=max(args.top, args.validate))
        what = f"{args.model}: cheapest pools for {args.load:g} QPS + {args.headroom:.0%} headroom"
    else:
        budget = args.budget if args.budget is not None else space.budget
        if budget is None:
            raise KairosError("no budget: pass --budget USD_PER_HOUR or --load QPS")
        ranking = rank_by_budget(problem, budget, top=max(args.top, args.validate), method=args.method)
        what = f"{args.model}: pools within {budget:g} $/hour, by {'paper bound' if ranking.method == 'enumerate' else 'fluid limit'}"
    candidates: list[Candidate] = ranking.candidates
    if args.validate:
        settings = SimSettings(args.model, problem.qos_ms, args.sim_policy, args.sim_seed, args.sim_queries)
        try:
            candidates = pick_validated(validate(candidates, settings, args.validate), args.load)
        except SimulatorUnavailable as exc:
            print(f"kairos-allocate: warning: {exc}", file=sys.stderr)
    candidates = candidates[: args.top]
    shown = Ranking(ranking.mode, ranking.method, candidates, ranking.target_qps, ranking.cloud_cost, ranking.cloud_bound)
    if args.json:
        sys.stdout.write(to_json(candidates).decode() + "\n")
        for note in problem.notes():
            print(f"note: {note}", file=sys.stderr)
    else:
        print(f"{what} (QoS {problem.qos_ms:g} ms, {ranking.method})")
        print(format_table(shown, problem.notes()))
    if args.plot is not None:
        plot(shown, args.plot, what)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.write_config is not None:
        for warning in write_config(args.write_config, candidates[0].pool, args.model):
            print(f"kairos-allocate: warning: {warning}", file=sys.stderr)
        print(f"wrote pool {candidates[0].pool.label()} to {args.write_config}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KairosError as exc:  # ConfigError, ProfileError: one line, no traceback
        print(f"kairos-allocate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
