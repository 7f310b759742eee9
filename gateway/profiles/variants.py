"""Variant sets shipped as data: models that do the same task at different accuracy and speed
(``benchmarks.variants`` builds them), each with its measured accuracy and latency profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.errors import ProfileError
from gateway.profiles.profile import ProfileSet, load_profiles

VARIANTS_DIR = Path(__file__).parent / "data" / "variants"


@dataclass(frozen=True, slots=True)
class Variant:
    model: str
    accuracy: float  # on a held-out split, in [0, 1]


@dataclass(frozen=True, slots=True)
class VariantSet:
    name: str
    instance_type: str  # the type the profiles were measured on
    variants: tuple[Variant, ...]
    profiles: ProfileSet


def load_variant_set(name: str, directory: Path = VARIANTS_DIR) -> VariantSet:
    path = directory / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.json")))
        raise ProfileError(f"no variant set {name!r}; shipped: {known or 'none'}")
    doc = orjson.loads(path.read_bytes())
    variants = tuple(Variant(v["model"], float(v["accuracy"])) for v in doc["variants"])
    profiles = ProfileSet()
    for v in doc["variants"]:
        profiles = profiles.merged(load_profiles(directory / v["profile"]))
    return VariantSet(doc["name"], doc["instance_type"], variants, profiles)
