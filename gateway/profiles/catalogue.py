"""Instance-type catalogue (price, accelerator) and the paper's per-model QoS targets."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.errors import ConfigError

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True, slots=True)
class InstanceType:
    name: str
    price_per_hour: float
    accelerator: bool


@dataclass(frozen=True, slots=True)
class Catalogue:
    types: dict[str, InstanceType]
    qos_ms: dict[str, float]

    def type(self, name: str) -> InstanceType:
        try:
            return self.types[name]
        except KeyError:
            known = ", ".join(sorted(self.types))
            raise ConfigError(f"unknown instance type {name!r}; expected one of: {known}") from None

    def qos(self, model: str) -> float:
        try:
            return self.qos_ms[model]
        except KeyError:
            known = ", ".join(sorted(self.qos_ms))
            raise ConfigError(f"no QoS target for model {model!r}; expected one of: {known}") from None


def load_catalogue(prices_csv: Path | None = None, qos_json: Path | None = None) -> Catalogue:
    """Read the shipped price catalogue (``prices.csv``: instance,price_per_hour,accelerator)."""
    prices_csv = prices_csv or DATA_DIR / "prices.csv"
    qos_json = qos_json or DATA_DIR / "qos.json"
    types: dict[str, InstanceType] = {}
    with open(prices_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["instance"]
            types[name] = InstanceType(
                name=name,
                price_per_hour=float(row["price_per_hour"]),
                accelerator=row.get("accelerator", "false").strip().lower() == "true",
            )
    qos = {k: float(v) for k, v in orjson.loads(qos_json.read_bytes()).items()}
    return Catalogue(types=types, qos_ms=qos)
