"""The abuse suite (``python -m benchmarks.abuse``): the report's verdicts and formatting, the
command's usage errors, the attacker's view of a server that cuts it off (a fake HTTP/2 server,
in process), and one short run of the real suite against real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.abuse.attacks import (
    ATTACKS,
    GRPC,
    HTTP,
    AttackOutcome,
    HeadersOnly,
    PingFlood,
    Target,
    execute,
)
from benchmarks.abuse.cli import main
from benchmarks.abuse.measure import LegitResult, ProcUsage, cpu_seconds, rss_bytes
from benchmarks.abuse.report import (
    SCHEMA,
    Baseline,
    Row,
    SuiteReport,
    Targets,
    disconnect_cell,
    render_markdown,
)
from gateway.grpc_server.frames import PREFACE, ErrorCode, goaway, settings_frame

# -- the report -------------------------------------------------------------------------------


def outcome(connections: int = 1, disconnected: int = 1, **kw: object) -> AttackOutcome:
    closed = disconnected > 0
    doc: dict[str, object] = {
        "attack": "ping-flood",
        "front": GRPC,
        "connections": connections,
        "disconnected": disconnected,
        "first_disconnect_s": 0.02 if closed else None,
        "last_disconnect_s": 0.02 if closed else None,
        "reasons": {"GOAWAY ENHANCE_YOUR_CALM": disconnected} if closed else {},
        "sent_frames": 235_520,
        "sent_bytes": 4_003_840,
    }
    doc.update(kw)
    return AttackOutcome.from_json(doc)


def row(
    *,
    errors: int = 0,
    p99: float | None = 20.0,
    baseline: float | None = 10.0,
    growth: float = 3.0,
    abuser: AttackOutcome | None = None,
    gateway_exit: int | None = None,
) -> Row:
    legit = LegitResult("grpc://127.0.0.1:1", scheduled=500, ok=500 - errors, errors=errors, p99_ms=p99)
    if errors:
        legit.error_kinds = {"grpc_UNAVAILABLE": errors}
    usage = ProcUsage(cpu_s=1.25, rss_before_mb=100.0, rss_peak_mb=100.0 + growth, rss_after_mb=100.0)
    return Row(
        attack="ping-flood",
        front=GRPC,
        server="native",
        gateway_grpc_server="native",
        legit=legit,
        baseline_p99_ms=baseline,
        usage=usage,
        abuser=abuser or outcome(),
        gateway_exit=gateway_exit,
        gateway_stop="exit 0 in 0.1 s",
    )


def test_a_row_within_every_target_passes() -> None:
    r = row(p99=20.0, baseline=10.0, growth=63.9)  # exactly 2x is within the target
    assert r.p99_ratio == 2.0
    assert r.checks() == {"legit_errors": True, "p99": True, "memory": True, "disconnected": True}
    assert r.passed and r.failures() == []


@pytest.mark.parametrize(
    ("kwargs", "failed"),
    [
        ({"errors": 1}, "legit_errors"),
        ({"p99": 20.2}, "p99"),
        ({"p99": None}, "p99"),  # no answered query: no p99
        ({"baseline": None}, "p99"),  # no baseline: nothing to compare with
        ({"growth": 64.0}, "memory"),  # strictly under 64 MB
        ({"abuser": outcome(connections=4, disconnected=3)}, "disconnected"),
        ({"abuser": outcome(connections=0, disconnected=0, error="ConnectionRefusedError")}, "disconnected"),
        ({"gateway_exit": -11}, "legit_errors"),
    ],
)
def test_each_target_fails_on_its_own(kwargs: dict[str, object], failed: str) -> None:
    r = row(**kwargs)  # type: ignore[arg-type]
    checks = r.checks()
    assert not checks.pop(failed)
    assert all(checks.values())
    assert not r.passed


def test_disconnect_cell() -> None:
    assert disconnect_cell(outcome()) == "yes 1/1 at 0.02 s (GOAWAY ENHANCE_YOUR_CALM)"
    assert disconnect_cell(outcome(connections=4, disconnected=0)) == "no 0/4"
    spread = outcome(
        connections=100,
        disconnected=100,
        first_disconnect_s=0.4,
        last_disconnect_s=10.1,
        reasons={"closed after HTTP 408": 98, "reset (ECONNRESET)": 2},
    )
    assert disconnect_cell(spread) == "yes 100/100 at 0.40-10.10 s (closed after HTTP 408 x98 +1 other)"
    # Seen only after the attack's window (a socket the attacker left unread): marked as such.
    late = outcome(attack_s=10.0, first_disconnect_s=10.05, last_disconnect_s=10.05)
    assert disconnect_cell(late) == "yes 1/1 at 10.05 s (watch) (GOAWAY ENHANCE_YOUR_CALM)"
    refused = outcome(connections=0, disconnected=0, error="ConnectionRefusedError: [Errno 111]")
    assert disconnect_cell(refused) == "error: ConnectionRefusedError: [Errno 111]"


def suite_report() -> SuiteReport:
    legit = LegitResult("grpc://127.0.0.1:1", scheduled=500, ok=500, p99_ms=10.0)
    base = Baseline(GRPC, "native", legit, ProcUsage(cpu_s=0.9, rss_before_mb=100, rss_peak_mb=101))
    failing = row(errors=3, p99=35.0, growth=80.0, abuser=outcome(connections=4, disconnected=0))
    failing.attack = "zero-window"
    return SuiteReport(
        {"rate": 50.0, "batch_mix": "fixed:20", "duration_s": 10.0, "grace_s": 1.0},
        baselines=[base],
        rows=[row(), failing],
        targets=Targets(),
        started="2026-11-23T10:00:00",
        wall_s=42.0,
        host={"cpus": 2, "load_start": 0.5, "load_end": 1.25},
    )


def test_markdown_table() -> None:
    text = render_markdown(suite_report())
    lines = text.splitlines()
    assert lines[0].startswith("Unloaded (no attack): native grpc: p99 10.00 ms, 0 errors")
    header = next(i for i, line in enumerate(lines) if line.startswith("| attack |"))
    assert lines[header].split(" | ")[1:4] == ["server", "legit errors", "legit p99 ms"]
    assert set(lines[header + 1]) <= {"|", "-"}
    assert lines[header + 2] == (
        "| ping-flood | native | 0 | 20.00 | 2.00x | 1.25 | 3.0 | "
        "yes 1/1 at 0.02 s (GOAWAY ENHANCE_YOUR_CALM) | 235.5k frames, 4.0 MB | pass |"
    )
    assert lines[header + 3] == (
        "| zero-window | native | 3/500 | 35.00 | 3.50x | 1.25 | 80.0 | no 0/4 | 235.5k frames, 4.0 MB "
        "| FAIL: legit errors, p99, memory, not cut off |"
    )
    # Every row has as many cells as the header.
    assert {lines[i].count(" | ") for i in (header, header + 2, header + 3)} == {lines[header].count(" | ")}
    assert "- zero-window / native: legit errors: grpc_UNAVAILABLE 3" in lines
    assert "Machine: 2 CPUs, load average 0.5 at the start, 1.25 at the end (42 s in all)." in lines


def test_json_report() -> None:
    doc = json.loads(json.dumps(suite_report().to_json()))  # plain JSON types throughout
    assert doc["schema"] == SCHEMA and doc["host"]["cpus"] == 2
    assert doc["targets"] == {"max_legit_errors": 0, "max_p99_ratio": 2.0, "max_growth_mb": 64.0}
    assert [r["attack"] for r in doc["rows"]] == ["ping-flood", "zero-window"]
    first, second = doc["rows"]
    assert first["passed"] and not second["passed"]
    assert second["checks"] == {"legit_errors": False, "p99": False, "memory": False, "disconnected": False}
    assert first["p99_ratio"] == 2.0 and first["gateway"]["growth_mb"] == 3.0
    assert AttackOutcome.from_json(first["abuser"]) == outcome()


def test_proc_readers_on_this_process() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert rss_bytes(os.getpid()) > 1024 * 1024


# -- the command ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--attacks", "nope"],
        ["--attacks", "ping-flood,nope"],
        ["--servers", "grpcio,h2o"],
        ["--duration", "0"],
        ["--duration", "nan"],
        ["--rate", "-5"],
        ["--pool", "r5n.large=0"],
        ["--pool", "no.such.type=2"],
        ["--batch-mix", "fixed:0"],
        ["--no-such-flag"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    assert rc == 2
    assert "error" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(ATTACKS)
    assert {ATTACKS[name].front for name in ATTACKS} == {GRPC, HTTP}


# -- the attacker against a fake server -------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_h2_server(cut_after_bytes: int | None) -> AsyncIterator[int]:
    """An HTTP/2 server that reads and throws away, and (``cut_after_bytes``) sends GOAWAY
    ENHANCE_YOUR_CALM and closes once that much has arrived."""

    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writer.write(settings_frame({}))
        seen = 0
        try:
            assert await reader.readexactly(len(PREFACE)) == PREFACE
            while chunk := await reader.read(65536):
                seen += len(chunk)
                if cut_after_bytes is not None and seen >= cut_after_bytes:
                    writer.write(goaway(0, ErrorCode.ENHANCE_YOUR_CALM))
                    await writer.drain()
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def test_a_server_that_cuts_the_attacker_off_is_seen_doing_so() -> None:
    async with fake_h2_server(cut_after_bytes=100_000) as port:
        out = await execute(PingFlood(Target("127.0.0.1", port, 1, "rm2", 4096)), duration_s=5.0, grace_s=0.5)
    assert out.error is None
    assert (out.connections, out.disconnected) == (1, 1)
    assert out.all_disconnected and out.ended_by == "disconnected"
    assert next(iter(out.reasons)) in ("GOAWAY ENHANCE_YOUR_CALM", "closed")
    assert out.first_disconnect_s is not None and out.first_disconnect_s < 5.0
    assert out.counters["pings_sent"] > 0 and out.sent_bytes >= 100_000


async def test_a_server_that_keeps_the_attacker_is_held_to_the_window_within_caps() -> None:
    async with fake_h2_server(cut_after_bytes=None) as port:
        out = await execute(
            HeadersOnly(Target("127.0.0.1", port, 1, "rm2", 4096)), duration_s=0.6, grace_s=0.2
        )
    assert (out.connections, out.disconnected) == (4, 0) and not out.all_disconnected
    assert out.counters["streams_opened"] == 4000
    assert out.sent_frames <= HeadersOnly.max_frames and out.sent_bytes <= HeadersOnly.max_bytes
    assert out.ended_by == "window" and out.attack_s >= 0.6  # all it meant to send, then held


async def test_a_refused_connection_is_an_error_outcome() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = await execute(PingFlood(Target("127.0.0.1", port, 1, "rm2", 4096)), duration_s=1.0, grace_s=0.1)
    assert out.ended_by == "error" and out.error is not None and out.connections == 0
    assert not out.all_disconnected


# -- the suite against real processes ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_suite_runs_against_the_native_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "abuse.json"
    argv = ["--servers", "native", "--attacks", "ping-flood,short-body", "--duration", "2", "--grace", "0.5",
            "--json", str(path), "--workdir", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    # Progress on stderr: which attack, on which server.
    assert "ping-flood on native" in captured.err and "short-body on aiohttp" in captured.err
    assert "| ping-flood | native |" in captured.out and "| short-body | aiohttp |" in captured.out

    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and set(doc["host"]) == {"cpus", "load_start", "load_end"}
    assert [(b["server"], b["front"]) for b in doc["baselines"]] == [("native", "grpc"), ("aiohttp", "http")]
    for b in doc["baselines"]:
        assert b["legit"]["scheduled"] > 50 and b["legit"]["p99_ms"] is not None
    rows = {(r["attack"], r["server"]): r for r in doc["rows"]}
    assert set(rows) == {("ping-flood", "native"), ("short-body", "aiohttp")}
    for (attack, _), r in rows.items():
        assert r["front"] == ATTACKS[attack].front and r["gateway_grpc_server"] == "native"
        legit = r["legit"]
        assert legit["scheduled"] > 50 and legit["ok"] + legit["errors"] == legit["scheduled"]
        assert isinstance(legit["errors"], int)
        assert r["baseline_p99_ms"] is not None
        assert r["gateway"]["cpu_s"] >= 0 and r["gateway"]["growth_mb"] is not None
        assert set(r["checks"]) == {"legit_errors", "p99", "memory", "disconnected"}
        assert r["passed"] == all(r["checks"].values())
        abuser = r["abuser"]
        assert abuser["error"] is None and abuser["sent_bytes"] > 0
        assert abuser["connections"] == (1 if attack == "ping-flood" else 100)
        assert 0 <= abuser["disconnected"] <= abuser["connections"]
        assert r["gateway_exit"] is None


def test_a_control_row_is_marked_and_not_judged() -> None:
    report = suite_report()
    control = row(p99=35.0)
    control.control = True
    report.rows.append(control)
    lines = render_markdown(report).splitlines()
    mine = next(line for line in lines if line.startswith("| ping-flood (control) |"))
    assert mine.endswith("| control (attack at a decoy gateway) |")
    assert json.loads(json.dumps(report.to_json()))["rows"][-1]["control"] is True


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_control_aims_the_attack_at_a_second_gateway(tmp_path: Path) -> None:
    path = tmp_path / "abuse.json"
    argv = ["--servers", "native", "--attacks", "short-body", "--duration", "2", "--grace", "0.5", "--control",
            "--json", str(path), "--workdir", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(path.read_text())
    attacked, control = doc["rows"]
    assert (attacked["control"], control["control"]) == (False, True)
    # The plain row attacks the gateway the legitimate client uses; the control row another one.
    assert attacked["legit"]["url"] == f"http://{attacked['attacked']}"
    assert control["legit"]["url"] != f"http://{control['attacked']}"
    assert control["abuser"]["connections"] == 100 and control["abuser"]["sent_bytes"] > 0
    assert control["legit"]["errors"] == 0 and control["legit"]["scheduled"] > 50
