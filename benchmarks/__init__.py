"""Benchmarks, the load generator, the demo and the process launcher they share."""

import gateway  # noqa: F401  (its gRPC runtime defaults must precede any grpc import)
