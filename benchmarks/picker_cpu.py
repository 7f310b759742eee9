"""Benchmark: the endpoint picker's CPU per query, this working tree against another commit,
interleaved on one machine (the A/B for changes on the picker's hot path).

    python -m benchmarks.picker_cpu --base HEAD~1 [--rate 400] [--rounds 8] [--protocol http]

The base commit is checked out as a git worktree and put first on ``PYTHONPATH`` for its picker;
the same ``kairos-servers --zero-latency`` pool (4 r5n.large of rm2), Envoy and load generator
serve both. Each round starts a picker and an Envoy for each side in turn, sends ``--warmup-s``
then ``--measure-s`` of rm2 ``fixed:10`` queries at ``--rate`` (Poisson, seeded, the routing
headers), and reads the picker's CPU time from /proc over the measured part. Prints each pair
and the median ratio (this tree / base); progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.envoy import picker_bootstrap, start_envoy
from benchmarks.processes import console_script, cpu_seconds, free_port, running, start_picker, start_servers

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kairos-base-") as tmp:
        path = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)


def write_config(directory: Path) -> Path:
    doc = {"model": "rm2", "qos_ms": 350, "pool": [{"type": "r5n.large", "count": 4}],
           "servers": {"http_port": 0, "grpc_port": 0, "address_file": str(directory / "instances.json")},
           "gateway": {"http_port": 0, "grpc_port": 0, "epp_port": 0}}
    path = directory / "rm2.json"
    path.write_text(json.dumps(doc))
    return path


def one_side(config: Path, address_file: Path, directory: Path, pythonpath: str | None,
             args: argparse.Namespace) -> dict[str, Any]:
    """The picker's CPU per query over the measured part, for the code on ``pythonpath``."""
    env_before = os.environ.get("PYTHONPATH")
    if pythonpath is not None:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        picker = start_picker(config, ["--address-file", str(address_file)], directory)
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
    with running(picker):
        envoy = start_envoy(picker_bootstrap(f"127.0.0.1:{free_port()}", picker.epp, f"127.0.0.1:{free_port()}"),
                            directory)
        with running(envoy):
            url = envoy.url if args.protocol == "http" else "grpc://" + envoy.url.split("://", 1)[1]

            def load(seconds: float, out: Path) -> dict[str, Any]:
                cmd = [*console_script("kairos-loadgen", "benchmarks.loadgen.cli"), "--url", url, "--model", "rm2",
                       "--rate", str(args.rate), "--duration", str(seconds), "--batch-mix", "fixed:10",
                       "--seed", str(args.seed), "--routing-headers", "--quiet", "--json", str(out),
                       "--max-error-rate", "1"]
                subprocess.run(cmd, check=False)
                return dict(json.loads(out.read_text()))

            load(args.warmup_s, directory / "warmup.json")
            before = cpu_seconds(picker.pid)
            report = load(args.measure_s, directory / "measured.json")
            spent = cpu_seconds(picker.pid) - before
    ok = int(report["counts"]["ok"])
    return {"cpu_us_per_query": 1e6 * spent / ok if ok else None, "ok": ok,
            "sent": int(report["counts"]["sent"]), "within_qos_pct": report["within_qos_pct"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.picker_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit to compare with (any git revision)")
    p.add_argument("--rate", type=float, default=400.0, help="queries/s (default 400)")
    p.add_argument("--rounds", type=int, default=8, help="interleaved pairs (default 8)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--warmup-s", type=float, default=4.0)
    p.add_argument("--measure-s", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the pairs as JSON")
    args = p.parse_args(argv)
    pairs: list[dict[str, Any]] = []
    with worktree(args.base) as base, tempfile.TemporaryDirectory(prefix="kairos-picker-cpu-") as tmp:
        directory = Path(tmp)
        config = write_config(directory)
        servers = start_servers(config, directory / "instances.json", ["--zero-latency"], directory=directory)
        with running(servers):
            for r in range(args.rounds):
                pair = {"base": one_side(config, servers.address_file, directory, str(base), args),
                        "tree": one_side(config, servers.address_file, directory, None, args)}
                pairs.append(pair)
                b, t = pair["base"], pair["tree"]
                print(f"round {r + 1}/{args.rounds}: base {b['cpu_us_per_query']:.0f} us/query ({b['ok']}/{b['sent']} ok), "
                      f"this tree {t['cpu_us_per_query']:.0f} us/query ({t['ok']}/{t['sent']} ok)", flush=True)
    ratios = [p["tree"]["cpu_us_per_query"] / p["base"]["cpu_us_per_query"] for p in pairs
              if p["tree"]["cpu_us_per_query"] and p["base"]["cpu_us_per_query"]]
    if ratios:
        print(f"this tree / base, CPU per query: median {statistics.median(ratios):.3f} over {len(ratios)} pairs "
              f"(lower in {sum(r < 1 for r in ratios)})")
    if args.json is not None:
        args.json.write_text(json.dumps(pairs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
