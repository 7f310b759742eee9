"""One attack in its own process: ``python -m benchmarks.abuse.worker --attack NAME ...``.

The attacker gets a process (and an event loop) of its own, so that flooding as fast as it can
never slows the legitimate client, whose latency is what the suite measures. Protocol with the
runner: the worker prints ``abuse-worker ready`` once it is set up, waits for a line on stdin
(``go``), attacks, and prints one JSON line ``{"outcome": {...}}`` (``AttackOutcome``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson

from benchmarks.abuse.attacks import ATTACKS, Target, execute
from benchmarks.loadgen.runner import run_async

READY = "abuse-worker ready"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.abuse.worker")
    p.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--model", default="rm2")
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--grace", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        p.error("loopback only: --host must be 127.0.0.1, ::1 or localhost")
    target = Target(args.host, args.grpc_port, args.http_port, args.model, args.max_message_bytes)
    attack = ATTACKS[args.attack](target)  # payloads built before the clock starts
    print(READY, flush=True)
    if not sys.stdin.readline():
        return 1  # the runner went away
    outcome = run_async(execute(attack, args.duration, args.grace))
    sys.stdout.write(orjson.dumps({"outcome": outcome.to_json()}).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
