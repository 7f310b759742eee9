"""The paper's throughput "upper bound" for a pool, vectorised over many pools at once.

An estimate rather than a bound: the simulator's max can pass it (dien at QoS 50 on 2 GPUs and
9 CPUs: 679 by the formula, 690 q/s served at 99.7% within QoS), and for a fixed pool it can
fall as the QoS loosens (its CPU ratios move with the QoS). The ranking uses it as the paper does;
the fluid limit is the bound (for a target every query must meet).

For the CPU types present in a pool take s = max small_ratio, t = max time_ratio and
b* = max vio_batch. Then C = sum_k n_k * all_batch_k[b*] (what the CPUs sustain on queries below
b*), G_L = G * (1 - s) / (1 - t) (a GPU's rate on the large queries alone) and
D = C * (1 - s) / s (the large-query demand the CPUs' small-query rate brings along).
If D >= n_gpu * G_L the GPUs are the bottleneck: bound = n_gpu * G_L / (1 - s). Otherwise the
CPUs are: bound = C / s + n_gpu * G * (1 - D / (n_gpu * G_L)). GPUs alone: n_gpu * G.

Several GPU types are pooled as sum_g n_g * G_g (the paper has one GPU type).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from allocator.summary import TypeSummary


@dataclass(frozen=True)
class PaperBound:
    """Precomputed per-type tables for one model, mix and QoS over the types of a search space."""

    types: tuple[str, ...]
    gpu_qps: np.ndarray  # (T,) G for GPU types, 0 for CPU types
    is_cpu: np.ndarray  # (T,) bool
    small: np.ndarray  # (T,) small_ratio (CPU types)
    time: np.ndarray  # (T,) time_ratio (CPU types)
    vio: np.ndarray  # (T,) vio_batch, +inf where a type serves the whole mix
    all_batch: np.ndarray  # (T, T): all_batch of type k at vio_batch of type j

    @classmethod
    def build(cls, summaries: Mapping[str, TypeSummary], types: Sequence[str]) -> PaperBound:
        s = [summaries[t] for t in types]
        vio = np.array([x.vio_or_beyond for x in s])
        return cls(
            types=tuple(types),
            gpu_qps=np.array([x.qps if x.accelerator else 0.0 for x in s]),
            is_cpu=np.array([not x.accelerator for x in s]),
            small=np.array([x.small_ratio for x in s]),
            time=np.array([x.time_ratio for x in s]),
            vio=vio,
            all_batch=np.array([[x.all_batch(v) if not x.accelerator else 0.0 for v in vio] for x in s]),
        )

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """Bounds (QPS) for a (P, T) array of instance counts, one row per pool."""
        n = np.asarray(counts, dtype=float)
        gpu = n @ self.gpu_qps  # n_gpu * G
        cpu_here = (n > 0) & self.is_cpu
        any_cpu = cpu_here.any(axis=1)
        s = np.where(cpu_here, self.small, -np.inf).max(axis=1, initial=-np.inf)
        t = np.where(cpu_here, self.time, -np.inf).max(axis=1, initial=-np.inf)
        # b* is the largest vio_batch present: the CPU type that owns it indexes the all_batch column.
        owner = np.where(cpu_here, self.vio, -np.inf).argmax(axis=1)
        c = (n * np.where(self.is_cpu, self.all_batch[:, owner].T, 0.0)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gpu_large = gpu * (1.0 - s) / (1.0 - t)
            demand = c * (1.0 - s) / s
            gpu_bound = gpu_large / (1.0 - s)
            cpu_bound = c / s + gpu * (1.0 - demand / gpu_large)
            mixed = np.where(demand >= gpu_large, gpu_bound, cpu_bound)
        mixed = np.where(s >= 1.0, c + gpu, mixed)  # the CPUs serve every size: nothing is "large"
        mixed = np.where(s <= 0.0, gpu, mixed)  # the CPUs serve nothing within QoS
        return np.where(any_cpu, np.nan_to_num(mixed, nan=0.0, posinf=0.0), gpu)

    def one(self, counts: Mapping[str, int]) -> float:
        return float(self(np.array([[counts.get(t, 0) for t in self.types]]))[0])


def paper_bound_scalar(summaries: Mapping[str, TypeSummary], counts: Mapping[str, int]) -> float:
    """The same bound for one pool in plain Python, as the paper computes it (benchmark reference)."""
    gpu = sum(n * summaries[t].qps for t, n in counts.items() if n and summaries[t].accelerator)
    cpus = [(summaries[t], n) for t, n in counts.items() if n and not summaries[t].accelerator]
    if not cpus:
        return gpu
    s = max(x.small_ratio for x, _ in cpus)
    t = max(x.time_ratio for x, _ in cpus)
    b = max(x.vio_or_beyond for x, _ in cpus)
    c = sum(n * x.all_batch(b) for x, n in cpus)
    if s >= 1.0:
        return c + gpu
    if s <= 0.0:
        return gpu
    gpu_large = gpu * (1 - s) / (1 - t)
    demand = c * (1 - s) / s
    if demand >= gpu_large:
        return gpu_large / (1 - s)
    return c / s + gpu * (1 - demand / gpu_large)
