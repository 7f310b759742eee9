"""The suite's report: one row per (attack, server), checked against the targets, as a markdown
table and as JSON.

JSON schema (``SuiteReport.to_json()``; ``schema`` = "kairos-abuse/1")::

    {
      "schema": "kairos-abuse/1", "started": str, "wall_s": float,
      "host": {"cpus": int, "load_start": float, "load_end": float},
      "settings": {...},                       # the command's settings (duration, rate, pool ...)
      "targets": {"max_legit_errors": int, "max_p99_ratio": float, "max_growth_mb": float},
      "baselines": [{"front": "grpc"|"http", "server": str, "legit": LEGIT, "gateway": USAGE}],
      "rows": [{"attack": str, "front": str, "server": str, "gateway_grpc_server": str,
                "legit": LEGIT, "baseline_p99_ms": float|null, "p99_ratio": float|null,
                "gateway": USAGE, "gateway_exit": int|null, "gateway_stop": str,
                "abuser": OUTCOME, "checks": {"legit_errors", "p99", "memory", "disconnected": bool},
                "passed": bool, "elapsed_s": float,
                "control": bool, "attacked": "host:port"}]  # control: the attack at a decoy gateway
    }
    LEGIT   = {"url", "scheduled", "ok", "errors", "error_kinds", "p50_ms", "p99_ms", "max_ms"}
    USAGE   = {"cpu_s", "rss_before_mb", "rss_peak_mb", "rss_after_mb", "growth_mb", "exited"}
    OUTCOME = benchmarks.abuse.attacks.AttackOutcome (connections, disconnected,
              first_disconnect_s, last_disconnect_s, reasons, sent_frames, sent_bytes, ...)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.abuse.attacks import HTTP, AttackOutcome
from benchmarks.abuse.measure import LegitResult, ProcUsage

SCHEMA = "kairos-abuse/1"
CHECKS = ("legit_errors", "p99", "memory", "disconnected")
_FAILURE_WORDS = {
    "legit_errors": "legit errors",
    "p99": "p99",
    "memory": "memory",
    "disconnected": "not cut off",
}


@dataclass(frozen=True)
class Targets:
    max_legit_errors: int = 0
    max_p99_ratio: float = 2.0
    max_growth_mb: float = 64.0  # strictly less than this


@dataclass
class Baseline:
    front: str
    server: str
    legit: LegitResult
    usage: ProcUsage

    def to_json(self) -> dict[str, Any]:
        return {"front": self.front, "server": self.server, "legit": self.legit.to_json(),
                "gateway": self.usage.to_json()}  # fmt: skip


@dataclass
class Row:
    attack: str
    front: str  # grpc | http
    server: str  # what served the attacked front end: native | grpcio | aiohttp
    gateway_grpc_server: str  # the gateway process's gRPC server (for HTTP rows, which one ran)
    legit: LegitResult
    baseline_p99_ms: float | None
    usage: ProcUsage
    abuser: AttackOutcome
    gateway_exit: int | None = None  # set when the gateway died during the attack
    gateway_stop: str = ""  # how it stopped after the row: "exit 0", "killed after 5 s" ...
    elapsed_s: float = 0.0
    targets: Targets = field(default_factory=Targets)
    control: bool = False  # the attack went to a decoy gateway, not to the one measured
    attacked: str = ""  # the address the attacker was aimed at (host:port)

    @property
    def p99_ratio(self) -> float | None:
        if self.legit.p99_ms is None or not self.baseline_p99_ms:
            return None
        return round(self.legit.p99_ms / self.baseline_p99_ms, 2)

    def checks(self) -> dict[str, bool]:
        t = self.targets
        ratio = self.p99_ratio
        growth = self.usage.growth_mb
        return {
            "legit_errors": self.legit.errors <= t.max_legit_errors and self.gateway_exit is None,
            "p99": ratio is not None and ratio <= t.max_p99_ratio,
            "memory": growth is not None and growth < t.max_growth_mb,
            "disconnected": self.abuser.all_disconnected,
        }

    @property
    def passed(self) -> bool:
        return all(self.checks().values())

    def failures(self) -> list[str]:
        out = [_FAILURE_WORDS[k] for k, ok in self.checks().items() if not ok]
        if self.gateway_exit is not None:
            out.insert(0, f"gateway died ({self.gateway_exit})")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "front": self.front,
            "server": self.server,
            "gateway_grpc_server": self.gateway_grpc_server,
            "legit": self.legit.to_json(),
            "baseline_p99_ms": self.baseline_p99_ms,
            "p99_ratio": self.p99_ratio,
            "gateway": self.usage.to_json(),
            "gateway_exit": self.gateway_exit,
            "gateway_stop": self.gateway_stop,
            "abuser": self.abuser.to_json(),
            "checks": self.checks(),
            "passed": self.passed,
            "elapsed_s": round(self.elapsed_s, 1),
            "control": self.control,
            "attacked": self.attacked,
        }


@dataclass
class SuiteReport:
    settings: dict[str, Any]
    baselines: list[Baseline] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    targets: Targets = field(default_factory=Targets)
    started: str = ""
    wall_s: float = 0.0
    # The machine: CPUs and 1-minute load averages at the start and the end. Other processes on
    # the same CPUs move latencies; a p99 failure alone on a loaded machine deserves a rerun.
    host: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "started": self.started,
            "wall_s": round(self.wall_s, 1),
            "host": self.host,
            "settings": self.settings,
            "targets": asdict(self.targets),
            "baselines": [b.to_json() for b in self.baselines],
            "rows": [r.to_json() for r in self.rows],
        }


# -- markdown ---------------------------------------------------------------------------------


def _num(x: float | None, nd: int = 1, suffix: str = "") -> str:
    return "-" if x is None else f"{x:,.{nd}f}{suffix}"


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _count(n: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def disconnect_cell(o: AttackOutcome) -> str:
    """e.g. ``yes 1/1 at 0.02 s (GOAWAY ENHANCE_YOUR_CALM)``, ``no 0/4``."""
    if o.error is not None and o.connections == 0:
        return f"error: {o.error}"
    answer = "yes" if o.all_disconnected else "no"
    text = f"{answer} {o.disconnected}/{o.connections}"
    if o.first_disconnect_s is not None and o.last_disconnect_s is not None:
        first, last = o.first_disconnect_s, o.last_disconnect_s
        span = f"{first:.2f} s" if last - first < 0.005 else f"{first:.2f}-{last:.2f} s"
        text += f" at {span}"
        if o.attack_s and last > o.attack_s + 0.005:
            # Seen only in the watch after the attack: for a socket left unread, possibly long
            # after the server sent it.
            text += " (watch)"
    if o.reasons:
        reason, n = next(iter(o.reasons.items()))
        more = f" +{len(o.reasons) - 1} other" if len(o.reasons) > 1 else ""
        text += f" ({reason}{f' x{n}' if n > 1 else ''}{more})"
    return text


def sent_cell(o: AttackOutcome) -> str:
    unit = "writes" if o.front == HTTP else "frames"
    return f"{_count(o.sent_frames)} {unit}, {_size(o.sent_bytes)}" + (
        " (caps)" if o.ended_by == "caps" else ""
    )


def verdict_cell(row: Row) -> str:
    if row.control:
        return "control (attack at a decoy gateway)"
    failures = row.failures()
    return "pass" if not failures else "FAIL: " + ", ".join(failures)


def render_markdown(report: SuiteReport) -> str:
    t = report.targets
    s = report.settings
    lines: list[str] = []
    if report.baselines:
        parts = [
            f"{b.server} {b.front}: p99 {_num(b.legit.p99_ms, 2)} ms, {b.legit.errors} errors, "
            f"gateway CPU {_num(b.usage.cpu_s, 2)} s"
            for b in report.baselines
        ]
        lines.append("Unloaded (no attack): " + "; ".join(parts) + ".")
    if s:
        lines.append(
            f"Legitimate client: {s.get('rate')} q/s Poisson, batch {s.get('batch_mix')}, "
            f"{s.get('duration_s')} s per attack (+ up to {s.get('grace_s')} s watching for disconnects)."
        )
    if report.host:
        h = report.host
        lines.append(
            f"Machine: {h.get('cpus')} CPUs, load average {h.get('load_start')} at the start, "
            f"{h.get('load_end')} at the end ({report.wall_s:.0f} s in all)."
        )
    lines.append(
        f"Targets: legit errors <= {t.max_legit_errors}, p99 <= {t.max_p99_ratio:g}x unloaded, "
        f"RSS growth < {t.max_growth_mb:g} MB, every attacker connection cut off by the server."
    )
    lines.append("")
    lines.append(
        "| attack | server | legit errors | legit p99 ms | p99 / unloaded | gateway CPU s | RSS growth MB "
        "| abuser disconnected | attacker sent | verdict |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in report.rows:
        ratio = r.p99_ratio
        errors = f"{r.legit.errors}/{r.legit.scheduled}" if r.legit.errors else "0"
        lines.append(
            f"| {r.attack}{' (control)' if r.control else ''} | {r.server} | {errors} | {_num(r.legit.p99_ms, 2)} | "
            f"{_num(ratio, 2, 'x')} | {_num(r.usage.cpu_s, 2)} | {_num(r.usage.growth_mb, 1)} | "
            f"{disconnect_cell(r.abuser)} | {sent_cell(r.abuser)} | {verdict_cell(r)} |"
        )
    notes = _notes(report.rows)
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def _notes(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        bits = []
        if r.legit.error_kinds:
            kinds = ", ".join(f"{k} {v}" for k, v in r.legit.error_kinds.items())
            bits.append(f"legit errors: {kinds}")
        if r.abuser.error:
            bits.append(f"attacker: {r.abuser.error}")
        if r.gateway_exit is not None:
            bits.append(f"gateway exited {r.gateway_exit} during the attack")
        if r.gateway_stop and not r.gateway_stop.startswith("exit 0"):
            bits.append(f"gateway stop afterwards: {r.gateway_stop}")
        if bits:
            out.append(f"- {r.attack} / {r.server}: " + "; ".join(bits))
    return out
