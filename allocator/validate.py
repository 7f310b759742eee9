"""Validation: run the top candidates through the simulator and report what each really sustains.

Contract of the simulator: ``kairos-sim --model M --qos Q --pool TYPE=N,... --policy P --find-max
--json [--seed S] [--queries N]`` prints one JSON object with ``max_qps``: the highest Poisson
arrival rate at which at least 99% of queries finish within QoS.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson

from allocator.pool import Candidate, Pool

SIMULATOR = "kairos-sim"


class SimulatorUnavailable(RuntimeError):
    """The simulator is not installed, or failed on every candidate; the ranking stays unvalidated."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    model: str
    qos_ms: float
    policy: str = "kairos"
    seed: int | None = 0
    queries: int | None = None
    timeout_s: float = 900.0
    jobs: int = 2  # simulator processes at a time (each is single-threaded and CPU-bound)

    def command(self, executable: str, pool: Pool) -> list[str]:
        cmd = [
            executable, "--model", self.model, "--qos", f"{self.qos_ms:g}", "--pool", pool.spec(),
            "--policy", self.policy, "--find-max", "--json",
        ]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        if self.queries is not None:
            cmd += ["--queries", str(self.queries)]
        return cmd


def find_simulator() -> str | None:
    """This environment's ``kairos-sim`` (beside the running interpreter, which a virtual
    environment need not have on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / SIMULATOR
    return str(beside) if beside.is_file() else shutil.which(SIMULATOR)


def parse_max_qps(stdout: str) -> float:
    """``max_qps`` from the simulator's JSON output (the last JSON object line, if it printed more)."""
    for line in reversed([ln for ln in stdout.strip().splitlines() if ln.strip()] or [""]):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("max_qps"), (int, float)):
            return float(obj["max_qps"])
    try:  # one pretty-printed object
        obj = orjson.loads(stdout)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("max_qps"), (int, float)):
        return float(obj["max_qps"])
    raise ValueError("no JSON object with a numeric max_qps in the simulator's output")


def simulate(executable: str, settings: SimSettings, pool: Pool) -> tuple[float | None, str | None]:
    """(max_qps, None) or (None, one-line reason)."""
    try:
        proc = subprocess.run(
            settings.command(executable, pool), capture_output=True, text=True, timeout=settings.timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"{SIMULATOR} ran past {settings.timeout_s:g} s"
    except OSError as exc:
        return None, f"{SIMULATOR} could not start: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        return None, f"{SIMULATOR} exited {proc.returncode}: {last}"
    try:
        return parse_max_qps(proc.stdout), None
    except ValueError as exc:
        return None, str(exc)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def validate(
    candidates: Sequence[Candidate],
    settings: SimSettings,
    k: int,
    progress: Callable[[str], None] = _stderr,
    executable: str | None = None,
) -> list[Candidate]:
    """The first ``k`` candidates with ``simulated_max_qps`` filled in (the rest unchanged)."""
    executable = executable or find_simulator()
    if executable is None:
        raise SimulatorUnavailable(
            f"{SIMULATOR} is not installed (it comes with the simulator); the ranking below is not validated"
        )
    chosen = list(candidates[:k])
    done = 0
    start = time.perf_counter()

    def one(cand: Candidate) -> Candidate:
        nonlocal done
        t0 = time.perf_counter()
        qps, err = simulate(executable, settings, cand.pool)
        done += 1  # += on an int under the GIL from two threads: only the progress count, never a result
        what = f"{qps:.1f} QPS" if qps is not None else f"failed ({err})"
        progress(f"validate {done}/{len(chosen)}: {cand.pool.label()}: {what} in {time.perf_counter() - t0:.1f} s")
        return cand.with_simulation(qps, err)

    progress(f"validating the top {len(chosen)} in {SIMULATOR}, {settings.jobs} at a time ...")
    with ThreadPoolExecutor(max_workers=max(1, settings.jobs)) as pool:
        results = list(pool.map(one, chosen))
    if results and all(r.simulated_max_qps is None for r in results):
        raise SimulatorUnavailable(f"{SIMULATOR} failed on every candidate: {results[0].validation_error}")
    progress(f"validation done in {time.perf_counter() - start:.1f} s")
    return results + list(candidates[k:])


def pick_validated(candidates: Sequence[Candidate], load_qps: float | None = None) -> list[Candidate]:
    """Re-rank so the pick is the best validated pool.

    Budget mode: validated pools by simulated max, highest first. Load mode: the validated pools
    that carry the load, cheapest first. Pools not validated (or that do not carry it) follow in
    their original order.
    """
    ok = [c for c in candidates if c.simulated_max_qps is not None]
    if load_qps is None:
        best = sorted(ok, key=lambda c: (-(c.simulated_max_qps or 0.0), c.cost))
    else:
        best = sorted((c for c in ok if (c.simulated_max_qps or 0.0) >= load_qps), key=lambda c: c.cost)
    return best + [c for c in candidates if c not in best]
