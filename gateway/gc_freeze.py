"""Keep the garbage collector's full passes off the latency path.

Why: once started, a gateway, an instance worker or a load generator tracks about 70,000
container objects (numpy, scipy, grpc, aiohttp and our own modules). A full collection walks
all of them, ~35 ms on this machine: a whole dien QoS, during which no query moves. Full passes
are rare (none in a 20 s dien run at 500 QPS; they come as long-lived objects accumulate), so
this guards long-running processes. After ``gc.freeze`` collections skip everything that
existed at start-up. Call it once the process is set up, before traffic.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    gc.collect()  # free start-up garbage first: frozen objects are never collected
    gc.freeze()
