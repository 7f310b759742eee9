"""Keep gRPC's helper threads from preempting the event loop thread (Linux; a no-op elsewhere).

Why: grpc.aio does its I/O on C-core threads (the EventEngine pool, the completion-queue poller)
that hand each completion to the event loop through a socket, about four per gRPC query. On a
busy core, each of those threads, once woken, preempts the event loop thread in the middle of
a query (the scheduler's wakeup preemption): about 17 context switches per gRPC query, and the
Python code between them runs markedly slower on caches the switches keep evicting. As
``SCHED_BATCH`` threads they keep their fair share of the CPU but run when the loop thread
blocks or its time slice ends, instead of preempting it: about 4 switches per query and ~20%
less CPU per gRPC query on one core (``python -m benchmarks.gateway_overhead``). The event loop
thread itself stays ``SCHED_OTHER``, so it still preempts other work when a request arrives.

Threads that a demoted thread starts inherit its policy; call ``demote_helper_threads`` again
from time to time for any other thread started later.
"""

from __future__ import annotations

import asyncio
import os
import threading


def demote_helper_threads(loop_thread_id: int | None = None) -> int:
    """Make every thread of this process but the event loop's (default: the calling thread)
    ``SCHED_BATCH``; returns how many were changed. Threads that already have a policy other
    than ``SCHED_OTHER`` (set by someone on purpose) are left alone."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None or not os.path.isdir("/proc/self/task"):
        return 0
    keep = threading.get_native_id() if loop_thread_id is None else loop_thread_id
    changed = 0
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        if tid == keep:
            continue
        try:
            if os.sched_getscheduler(tid) == os.SCHED_OTHER:
                os.sched_setscheduler(tid, batch, os.sched_param(0))
                changed += 1
        except OSError:  # the thread has exited, or the policy may not be changed here
            continue
    return changed


async def keep_helper_threads_demoted(interval_s: float = 1.0) -> None:
    """Run on the event loop for the life of the process: demote now, then every ``interval_s``
    (threads started in between). Cancel it to stop."""
    loop_thread = threading.get_native_id()
    while True:
        demote_helper_threads(loop_thread)
        await asyncio.sleep(interval_s)
