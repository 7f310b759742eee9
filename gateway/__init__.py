"""The Kairos gateway: an SLO-aware query distributor for heterogeneous V2 inference pools.

Importing it changes nothing in the process: the entry points (``kairos-gateway``,
``kairos-servers``, ``kairos-loadgen``) apply the process settings they want
(``gateway.grpc_runtime``, GC freeze, helper threads)."""
