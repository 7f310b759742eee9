"""The abuse suite: ``python -m benchmarks.abuse`` attacks a live gateway's front ends on loopback
(hand-written HTTP/2 frames on gRPC, raw HTTP/1.1) with a legitimate client beside each attack,
and reports per attack and server: the client's errors and p99 against its unloaded p99, the
gateway's CPU seconds and memory growth, and whether (and how soon) the server cut the attacker
off.

Modules: ``wire`` (raw attacker connections), ``attacks`` (the attacks, ``ATTACKS``, ``execute``),
``worker`` (one attack in its own process), ``measure`` (/proc sampling, the legitimate client),
``report`` (rows, verdicts, markdown and JSON), ``cli`` (the runner and the command).
"""

from benchmarks.abuse.attacks import ATTACKS, Attack, AttackOutcome, Target
from benchmarks.abuse.cli import SuiteSettings, main, run_suite
from benchmarks.abuse.report import SCHEMA, Row, SuiteReport, Targets, render_markdown

__all__ = [
    "ATTACKS",
    "SCHEMA",
    "Attack",
    "AttackOutcome",
    "Row",
    "SuiteReport",
    "SuiteSettings",
    "Target",
    "Targets",
    "main",
    "render_markdown",
    "run_suite",
]
