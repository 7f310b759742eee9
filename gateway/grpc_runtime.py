"""gRPC C-core settings that must be in place before ``grpc`` is first imported.

Why: grpc.aio's newer EventEngine listener and endpoints (on by default since grpcio 1.6x) cost
the gateway's one core about 8% more CPU per gRPC query than the legacy POSIX I/O manager
(``python -m benchmarks.gateway_overhead``; a bare grpc.aio echo server gains 12-18%). The C
core reads ``GRPC_EXPERIMENTS`` once, when grpc loads, so an entry point that wants the default
calls ``apply_defaults`` before it imports anything that imports grpc. A value the user already
set wins.
"""

from __future__ import annotations

import os

GRPC_EXPERIMENTS_DEFAULT = "-event_engine_listener,-event_engine_for_all_other_endpoints"


def apply_defaults() -> None:
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS_DEFAULT)
