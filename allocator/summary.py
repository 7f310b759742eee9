"""Per-type summaries of a model on an instance type under a batch mix and a QoS target.

These are the numbers the paper's throughput bound is built from (its ``allocator_profile.json``):

- ``qps`` (GPU, "G"): queries/s one instance sustains on the whole mix, 1000 / mean service time.
- ``vio_batch`` (CPU): the smallest profiled batch size whose *median* service time exceeds QoS.
  The paper says "mean"; its published numbers match the median on all 15 (model, CPU type)
  pairs and the mean on only 11, so we follow the numbers.
- ``small_ratio``: the fraction of the mix below ``vio_batch``.
- ``time_ratio``: the fraction of the GPU's busy time (GPU serving the whole mix) that those small
  queries take.
- ``all_batch(b)``: queries/s one instance sustains serving only the queries below batch ``b``
  (1000 / their mean service time).
- ``qps`` (CPU): queries/s over the queries it can serve within QoS: the mix's queries whose
  service time (drawn from the profile's distribution) is within QoS, divided by the time they
  take. The paper's table stores this same number as ``all_batch[vio_batch]`` for the type's
  own violation batch, so ``all_batch(vio_batch)`` returns it too.

Batch sizes are rounded up to a multiple of 10 before lookup (the paper's convention: its traces
are at 10, 20, ..., 1000), so means are read at grid points ceil(b/10)*10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.errors import ConfigError
from gateway.profiles import LatencyProfile, ProfileSet

PAPER_ROUNDING = 10  # batch sizes are rounded up to a multiple of this before lookup


@dataclass(frozen=True, slots=True)
class MixOnGrid:
    """A batch mix with sizes rounded up to the lookup grid: distinct sizes and their mass."""

    sizes: np.ndarray  # (R,) increasing
    probs: np.ndarray  # (R,) sums to 1

    @classmethod
    def from_pmf(
        cls, sizes: np.ndarray, probs: np.ndarray, rounding: int = PAPER_ROUNDING, largest: int | None = None
    ) -> MixOnGrid:
        """``largest``: no size rounds past it (a profile that stops at 64 is read at 64, not 70)."""
        rounded = np.ceil(np.asarray(sizes, dtype=float) / rounding) * rounding
        if largest is not None:
            rounded = np.minimum(rounded, np.maximum(np.asarray(sizes, dtype=float), largest))
        grid, inverse = np.unique(rounded, return_inverse=True)
        mass = np.bincount(inverse, weights=np.asarray(probs, dtype=float), minlength=len(grid))
        keep = mass > 0
        return cls(sizes=grid[keep], probs=mass[keep] / mass[keep].sum())


@dataclass(frozen=True, slots=True)
class TypeSummary:
    instance_type: str
    accelerator: bool
    qps: float
    vio_batch: int | None  # None: every batch of the mix is within QoS (CPU), or a GPU
    small_ratio: float
    time_ratio: float
    # all_batch(b) = 1000 * _cum_mass[i] / _cum_work[i], i = number of grid sizes below b.
    _sizes: np.ndarray
    _cum_mass: np.ndarray
    _cum_work: np.ndarray

    def all_batch(self, batch: float) -> float:
        if self.vio_batch is not None and batch == self.vio_batch:
            return self.qps  # the paper's table: all_batch at the type's own violation batch is its qps
        i = int(np.searchsorted(self._sizes, batch, side="left"))
        return 1000.0 * self._cum_mass[i] / self._cum_work[i] if self._cum_work[i] > 0 else 0.0

    @property
    def vio_or_beyond(self) -> float:
        """``vio_batch``, or +inf for a type that serves the whole mix (it bounds nothing)."""
        return float("inf") if self.vio_batch is None else float(self.vio_batch)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"qps": round(self.qps, 3)}
        if not self.accelerator:
            out.update(
                vio_batch=self.vio_batch,
                small_ratio=round(self.small_ratio, 4),
                time_ratio=round(self.time_ratio, 4),
            )
        return out


def _within_qos(profile: LatencyProfile, qos_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """Per profile grid row: P(service time <= QoS) and E[service time; service time <= QoS].

    Exact for the profile's distribution (its quantile function is piecewise linear in the level).
    """
    u = profile.levels  # (L,)
    x = profile.quantiles  # (G, L)
    u0, u1 = u[:-1], u[1:]
    x0, x1 = x[:, :-1], x[:, 1:]
    # Level at which the quantile function crosses QoS, segment by segment (clipped to the segment).
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(x1 > x0, (qos_ms - x0) / (x1 - x0), np.where(x0 <= qos_ms, 1.0, 0.0))
    frac = np.clip(frac, 0.0, 1.0)
    du = (u1 - u0) * frac  # level mass of each segment within QoS
    x_end = x0 + (x1 - x0) * frac
    return du.sum(axis=1), (du * (x0 + x_end) / 2.0).sum(axis=1)


def _median_vio_batch(profile: LatencyProfile, qos_ms: float) -> int | None:
    medians = profile.quantiles_for(profile.batches, 0.5)
    over = np.nonzero(medians > qos_ms)[0]
    return int(profile.batches[over[0]]) if over.size else None


def summarise(
    profiles: ProfileSet,
    model: str,
    types: Sequence[str],
    accelerator: Sequence[bool],
    mix: MixOnGrid,
    qos_ms: float,
) -> dict[str, TypeSummary]:
    """Summaries of ``model`` on each of ``types``; CPU time ratios are relative to the first GPU type."""
    gpus = [t for t, acc in zip(types, accelerator, strict=True) if acc]
    gpu_work = None
    if gpus:
        ref = profiles.get(model, gpus[0])
        _check_range(ref, mix)
        gpu_work = mix.probs * ref.means_for(mix.sizes)
    out: dict[str, TypeSummary] = {}
    for name, acc in zip(types, accelerator, strict=True):
        prof = profiles.get(model, name)
        _check_range(prof, mix)
        means = prof.means_for(mix.sizes)
        work = mix.probs * means
        cum_mass = np.concatenate([[0.0], np.cumsum(mix.probs)])
        cum_work = np.concatenate([[0.0], np.cumsum(work)])
        if acc:
            out[name] = TypeSummary(name, True, 1000.0 / work.sum(), None, 1.0, 1.0, mix.sizes, cum_mass, cum_work)
            continue
        vio = _median_vio_batch(prof, qos_ms)
        small = mix.sizes < (vio if vio is not None else np.inf)
        small_ratio = float(mix.probs[small].sum())
        # Without a GPU in the space the time ratio has no reference; the bound then never uses it.
        time_ratio = float(gpu_work[small].sum() / gpu_work.sum()) if gpu_work is not None else small_ratio
        p_ok, e_ok = _within_qos(prof, qos_ms)
        p_at = np.interp(mix.sizes, prof.batches, p_ok)
        e_at = np.interp(mix.sizes, prof.batches, e_ok)
        work_ok = float(mix.probs @ e_at)
        qps = 1000.0 * float(mix.probs @ p_at) / work_ok if work_ok > 0 else 0.0
        out[name] = TypeSummary(name, False, qps, vio, small_ratio, time_ratio, mix.sizes, cum_mass, cum_work)
    return out


def _check_range(profile: LatencyProfile, mix: MixOnGrid) -> None:
    if mix.sizes.size and mix.sizes[-1] > profile.max_batch:
        raise ConfigError(
            f"the batch mix reaches batch {int(mix.sizes[-1])} but the profile of {profile.model} on "
            f"{profile.instance_type} stops at {profile.max_batch}"
        )
