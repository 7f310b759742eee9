"""Allocator: which mix of instances to rent for a model, a QoS target and a budget or a load.

Per-type summaries (``summary``), the paper's throughput bound (``bound``), the fluid LP limit
(``fluid``), the search over pools (``search``), validation in the simulator (``validate``), and
the CLI ``kairos-allocate`` (``cli``).
"""

from allocator.pool import Candidate, Pool
from allocator.space import SearchSpace, load_search_space

__all__ = ["Candidate", "Pool", "SearchSpace", "load_search_space"]
