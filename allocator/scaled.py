"""Estimated profiles for catalogue types the paper did not measure.

Rule (an estimate, not a measurement; every output that uses one says so): a CPU type without a
profile takes the profile of the measured CPU type of the same size (same vCPU count:
``*.large`` 2, ``*.xlarge`` 4, ``*.2xlarge`` 8), with every latency (mean and quantiles) multiplied
by a generation factor: 1.15 for previous-generation families (c4, m4, r4, t2), 1.10 for AMD
families (c5a, m5a, r5a, t3a), 1.0 otherwise. GPU types cannot be estimated this way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gateway.errors import ConfigError
from gateway.profiles import Catalogue, ProfileSet

OLD_GENERATION = {"c4", "m4", "r4", "t2"}
OLD_FACTOR = 1.15
AMD_FACTOR = 1.10
_NAME = re.compile(r"^(?P<family>[a-z]+\d+)(?P<extra>[a-z]*)\.(?P<size>\w+)$")


@dataclass(frozen=True, slots=True)
class ScaledFrom:
    instance_type: str
    reference: str
    factor: float

    def note(self) -> str:
        return f"{self.instance_type}: estimated as {self.reference} x {self.factor:.2f} (no measured profile)"


def _factor(name: str) -> float:
    m = _NAME.match(name)
    if m is None:
        return 1.0
    if m["family"] in OLD_GENERATION:
        return OLD_FACTOR
    return AMD_FACTOR if "a" in m["extra"] else 1.0


def _size(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else ""


def with_scaled_profiles(
    profiles: ProfileSet, catalogue: Catalogue, model: str, types: Iterable[str]
) -> tuple[ProfileSet, list[ScaledFrom]]:
    """``profiles`` plus estimates for those of ``types`` that have none for ``model``."""
    measured = [t for t in profiles.types(model) if t in catalogue.types and not catalogue.types[t].accelerator]
    added = dict(profiles.profiles)
    notes: list[ScaledFrom] = []
    for name in types:
        if (model, name) in added:
            continue
        if catalogue.type(name).accelerator:
            raise ConfigError(f"no latency profile for {model} on GPU type {name!r}, and GPU profiles cannot be estimated")
        same = [t for t in measured if _size(t) == _size(name)]
        if not same:
            raise ConfigError(
                f"no latency profile for {model} on {name!r} and no measured CPU type of size {_size(name)!r} to scale from"
            )
        ref = profiles.get(model, same[0])
        f = _factor(name)
        added[(model, name)] = replace(ref, instance_type=name, means=ref.means * f, quantiles=ref.quantiles * f)
        notes.append(ScaledFrom(name, ref.instance_type, f))
    return ProfileSet(added), notes
