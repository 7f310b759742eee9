"""The Kairos gateway: an SLO-aware query distributor for heterogeneous V2 inference pools."""

from gateway.grpc_runtime import apply_defaults

apply_defaults()  # before anything imports grpc
