"""Seeded workload models: batch-size mixes and arrival processes.

They live in ``gateway`` (not ``benchmarks``) because the product's simulator and the allocator
need them too; ``benchmarks`` builds on them.
"""

from gateway.workload.arrivals import (
    ArrivalProcess,
    ConstantArrivals,
    IntegerPoissonArrivals,
    PiecewiseRateArrivals,
    PoissonArrivals,
)
from gateway.workload.batch_mix import (
    BatchMix,
    FixedMix,
    ProductionMix,
    TraceMix,
    UniformMix,
    parse_batch_mix,
)
from gateway.workload.trace import QueryTrace, load_trace_csv, make_workload

__all__ = [
    "ArrivalProcess",
    "BatchMix",
    "ConstantArrivals",
    "FixedMix",
    "IntegerPoissonArrivals",
    "PiecewiseRateArrivals",
    "PoissonArrivals",
    "ProductionMix",
    "QueryTrace",
    "TraceMix",
    "UniformMix",
    "load_trace_csv",
    "make_workload",
    "parse_batch_mix",
]
