"""A concrete workload: the seeded list of (arrival time, batch size) queries."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.errors import ConfigError
from gateway.workload.arrivals import ArrivalProcess
from gateway.workload.batch_mix import MAX_BATCH, BatchMix


@dataclass(frozen=True, eq=False)
class QueryTrace:
    arrival_ms: np.ndarray  # (n,) non-decreasing
    batch: np.ndarray  # (n,) int

    def __len__(self) -> int:
        return len(self.arrival_ms)

    @property
    def duration_ms(self) -> float:
        return float(self.arrival_ms[-1]) if len(self) else 0.0


def make_workload(arrivals: ArrivalProcess, mix: BatchMix, n: int, seed: int) -> QueryTrace:
    """The same (seed, arrivals, mix, n) gives the same queries everywhere.

    Arrivals and batch sizes use independent streams, so changing the rate keeps the batches.
    """
    if n < 1:
        raise ConfigError(f"number of queries: expected >= 1, got {n}")
    times = arrivals.times_ms(n, np.random.default_rng([seed, 0]))
    batches = mix.sample(n, np.random.default_rng([seed, 1]))
    return QueryTrace(arrival_ms=np.asarray(times, dtype=float), batch=np.asarray(batches, dtype=np.int64))


def load_trace_csv(path: str | Path) -> QueryTrace:
    """Replay a CSV trace with columns ``timestamp_ms,batch`` (header required)."""
    path = Path(path)
    times: list[float] = []
    batches: list[int] = []
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"timestamp_ms", "batch"} <= set(reader.fieldnames):
                raise ConfigError(f"{path}: expected a header with columns timestamp_ms,batch")
            for line, row in enumerate(reader, start=2):
                try:
                    t, b = float(row["timestamp_ms"]), int(row["batch"])
                except (TypeError, ValueError):
                    raise ConfigError(f"{path}:{line}: expected a number and an integer, got {row}") from None
                if not 1 <= b <= MAX_BATCH:
                    raise ConfigError(f"{path}:{line}: batch {b} outside 1..{MAX_BATCH}")
                times.append(t)
                batches.append(b)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such trace file") from None
    if not times:
        raise ConfigError(f"{path}: the trace has no rows")
    t0 = np.asarray(times)
    order = np.argsort(t0, kind="stable")
    t0 = t0[order] - t0.min()
    return QueryTrace(arrival_ms=t0, batch=np.asarray(batches, dtype=np.int64)[order])
