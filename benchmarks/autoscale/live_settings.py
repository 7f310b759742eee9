"""The two settings the loop is replayed live in (``benchmarks.autoscale.live``), each with what the
live run and its simulation share: the models and their traces, the config the processes start
from, ``kairos-autoscale``'s arguments (time compressed) and the simulated setting of the same run.

- ``hetero``: rm2 and dien on Faro's job7 and job2 shapes, g4dn.xlarge and r5n.large at their
  prices, no cap, the min-cost objective (``benchmarks.autoscale.hetero``).
- ``faro``: Faro's own setting, ten jobs of 1-CPU replicas (``cpu-1``, Faro's shifted log-normal
  service time as the emulated instances' profile) under a cap of 32 or 36, 720 ms target, the
  utility objective, a removed replica's CPU held 30 s (``benchmarks.autoscale.faro_setting``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator.autoscale.actuator import GroupKey
from allocator.autoscale.simloop import GATEWAY, SimModel, SimSetting
from benchmarks.autoscale import faro_setting, hetero
from benchmarks.faro_trace import load_trace
from benchmarks.planner.faro import LEVELS, SLO_MS, TYPE
from gateway.config import Config
from gateway.sim.transport import fittable_p99
from gateway.workload import FixedMix, QueryTrace

Transport = Mapping[str, tuple[float | None, float | None]]  # per model, the live round trip (mean, p99 ms)


@dataclass(frozen=True)
class Compressed:
    """The loop's time settings, one trace minute lasting ``minute_s``."""

    minute_s: float

    @property
    def scale(self) -> float:
        return 60.0 / self.minute_s

    def __call__(self, seconds: float) -> float:
        return seconds / self.scale

    def loop_args(self, startup_s: Mapping[str, float]) -> list[str]:
        """``kairos-autoscale``'s time settings (its defaults, compressed) and start-up delays."""
        startup = ",".join(f"{t}={self(s):g}" for t, s in startup_s.items())
        return ["--tick", f"{self(10.0):g}", "--plan-every", f"{self(30.0):g}", "--step", f"{self.minute_s:g}",
                "--horizon", f"{self(120.0):g}", "--down-after", f"{self(120.0):g}", "--measure", f"{self(30.0):g}",
                "--startup-delay", startup]


class LiveSetting:
    name: str
    models: tuple[str, ...]
    qos_ms: float | Mapping[str, float]
    prices: dict[str, float]
    startup_s: dict[str, float]
    max_change: int
    cap: int | None = None
    release_s: float = 0.0

    def target_ms(self, model: str) -> float:
        return self.qos_ms[model] if isinstance(self.qos_ms, Mapping) else float(self.qos_ms)

    def traces(self, seed: int, minutes: int | None, c: Compressed) -> dict[str, QueryTrace]:
        raise NotImplementedError

    def write_config(self, directory: Path, seed: int) -> Path:
        raise NotImplementedError

    def autoscale_args(self, c: Compressed) -> list[str]:
        raise NotImplementedError

    def static(self) -> dict[GroupKey, int]:
        """The static pool sized for the peak, the baseline."""
        raise NotImplementedError

    def loadgen_args(self, model: str) -> list[str]:
        return []

    def types(self, model: str) -> tuple[str, ...]:
        return tuple(self.prices)

    def sim_setting(self, config: Config, queries: Mapping[str, QueryTrace], c: Compressed,
                    transport: Transport | None = None) -> SimSetting:
        trip = transport or {}
        sims = []
        for m in self.models:
            mean_ms, p99_ms = trip.get(m, (None, None))
            sims.append(SimModel(m, queries[m], self.target_ms(m), self.types(m), mean_ms or 0.0,
                                 fittable_p99(mean_ms or 0.0, p99_ms)))
        return SimSetting(tuple(sims), config.profile_set(), GATEWAY, self.cap, {t: c(s) for t, s in self.startup_s.items()},
                          c(self.release_s), self.prices, tick_s=c(10.0), max_change=self.max_change)

    def _write(self, directory: Path, doc: dict[str, Any], seed: int) -> Path:
        doc["servers"] = {"http_port": 0, "grpc_port": 0, "admin_port": 0, "seed": seed,
                          "address_file": str(directory / "instances.json")}
        doc["gateway"] = {"http_port": 0, "grpc_port": 0, "admin_port": 0, "probe_interval_s": 0.2}
        path = directory / "config.json"
        path.write_text(json.dumps(doc, indent=2))
        return path


class HeteroLive(LiveSetting):
    name = "hetero"
    models = tuple(hetero.JOBS)
    startup_s = hetero.STARTUP_S
    max_change = 4

    def __init__(self, peaks: dict[str, float]) -> None:
        self.peaks = peaks
        self.qos_ms = {"rm2": 350.0, "dien": 35.0}
        self.prices = hetero.prices()

    def traces(self, seed: int, minutes: int | None, c: Compressed) -> dict[str, QueryTrace]:
        per_minute = hetero.rates_per_minute(self.peaks, minutes)
        return {m: hetero.trace(per_minute[m], seed, k, c.minute_s) for k, m in enumerate(self.models)}

    def write_config(self, directory: Path, seed: int) -> Path:
        return self._write(directory, {"models": [
            {"name": m, "qos_ms": self.target_ms(m), "pool": [{"type": hetero.CPU, "count": 1}]} for m in self.models
        ]}, seed)

    def autoscale_args(self, c: Compressed) -> list[str]:
        return [*c.loop_args(self.startup_s), "--max-change", str(self.max_change), "--objective", "min_cost",
                "--load-quantile", f"{hetero.LOAD_QUANTILE:g}"]

    def static(self) -> dict[GroupKey, int]:
        return hetero.peak_plan(self.peaks)


class FaroLive(LiveSetting):
    name = "faro"
    qos_ms = SLO_MS
    prices = {TYPE: faro_setting.PRICE_PER_HOUR}
    startup_s = {TYPE: faro_setting.STARTUP_S}
    release_s = faro_setting.RELEASE_S

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.max_change = cap  # no bound per tick beyond the cap, as in the simulated setting
        self.models = tuple(load_trace()[0])

    def traces(self, seed: int, minutes: int | None, c: Compressed) -> dict[str, QueryTrace]:
        counts = load_trace()[1][:minutes].astype(float)
        return {m: hetero.trace(counts[:, k], seed, k, c.minute_s, FixedMix(1)) for k, m in enumerate(self.models)}

    def write_config(self, directory: Path, seed: int) -> Path:
        profiles = directory / "profiles"
        profiles.mkdir(parents=True, exist_ok=True)
        body = faro_setting.profile_body()
        for m in self.models:
            (profiles / f"{m}.json").write_text(json.dumps({
                "model": m, "unit": "ms", "quantile_levels": LEVELS, "types": {TYPE: body},
                "source": "Faro's simulator: 79.3 ms + lognormal (scale 68.6 ms, shape 0.422), mean 154 ms"}))
        return self._write(directory, {
            "instance_types": {TYPE: {"price_per_hour": self.prices[TYPE], "accelerator": False}},
            "profiles": "profiles",
            "models": [{"name": m, "qos_ms": SLO_MS, "pool": [{"type": TYPE, "count": 1}]} for m in self.models],
        }, seed)

    def autoscale_args(self, c: Compressed) -> list[str]:
        return [*c.loop_args(self.startup_s), "--max-change", str(self.max_change), "--objective", "utility",
                "--fairness", "0", "--load-quantile", "0.9", "--batch-mix", "fixed:1", "--cap", str(self.cap),
                "--max-utilisation", "1", "--release-after", f"{c(self.release_s):g}"]

    def loadgen_args(self, model: str) -> list[str]:
        return ["--input", "input0:FP32:16"]  # the emulated instances' input for a model of no shipped schema

    def static(self) -> dict[GroupKey, int]:
        assert self.cap is not None
        return faro_setting.peak_split(self.cap)

