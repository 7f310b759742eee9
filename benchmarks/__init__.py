"""Benchmarks, the load generator, the demo and the process launcher they share.

Each module here is an entry point (``python -m benchmarks.X``), and this package runs first:
it applies the gRPC runtime default before any benchmark imports grpc."""

from gateway.grpc_runtime import apply_defaults

apply_defaults()
