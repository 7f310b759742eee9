"""``kairos-sim``: the gateway's own dispatcher, policies and estimator on a virtual clock."""

from gateway.sim.engine import DEFAULT_WARMUP, default_profiles, service_times, simulate
from gateway.sim.pool import PoolSpec, expand_pool, format_pool, parse_pool, pool_cost, pool_size
from gateway.sim.result import SimResult

__all__ = [
    "DEFAULT_WARMUP",
    "PoolSpec",
    "SimResult",
    "default_profiles",
    "expand_pool",
    "format_pool",
    "parse_pool",
    "pool_cost",
    "pool_size",
    "service_times",
    "simulate",
]
