"""Faro's 6-hour, 10-job trace (``benchmarks/data/faro-trace``, with its licence): per-minute
request counts per job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

TRACE = Path(__file__).resolve().parent / "data" / "faro-trace" / "input.jsonl"
MINUTE_MS = 60_000.0


def spread_over_minutes(counts: np.ndarray, rng: np.random.Generator, minute_ms: float = MINUTE_MS) -> np.ndarray:
    """Arrival times (ms): each minute's count at uniform random times within it, sorted
    (``minute_ms`` below 60,000 replays the trace time compressed)."""
    parts = [m * minute_ms + np.sort(rng.uniform(0.0, minute_ms, int(c))) for m, c in enumerate(counts)]
    return np.concatenate(parts) if parts else np.zeros(0)


def load_trace(path: Path = TRACE) -> tuple[list[str], np.ndarray]:
    """(job names ``job0``..``job9``, (minutes, jobs) request counts)."""
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    jobs = sorted(rows[0]["counts"], key=lambda j: int(j.rsplit("cluster", 1)[-1]))
    counts = np.array([[r["counts"][j]["classifier"] for j in jobs] for r in sorted(rows, key=lambda r: r["ts"])])
    return [f"job{j.rsplit('cluster', 1)[-1]}" for j in jobs], counts
