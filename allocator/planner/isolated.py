"""Plans solved in a child process that is killed past a hard deadline, for ``kairos-plan serve``.

A request's time limit bounds HiGHS, not every path around it (a refinement's first simulation, a
bug); a thread cannot be stopped, so one solve that overran held a worker of the service for good
and every later plan waited behind it. A child process can be stopped. Children fork from a
server process that has imported the planner once (``forkserver``): a few ms each, and no thread
of the service is copied into them.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
from multiprocessing.connection import Connection
from typing import Any

from allocator.planner.plan import Plan, make_plan
from allocator.planner.request import PlanRequest
from allocator.planner.solve import PlanInfeasible, PlanTimeout

_CONTEXT = mp.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["allocator.planner.plan"])


class PlannerCrashed(RuntimeError):
    """The child ended without an answer, or the plan raised something unexpected."""


class PlanTooLarge(RuntimeError):
    """The plan needed more memory than the child may have."""


def _solve(req: PlanRequest, conn: Connection, memory_bytes: int | None) -> None:
    answer: tuple[str, Any]
    try:
        if memory_bytes is not None:  # the address space: what a plan may take of the machine's memory
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        answer = ("plan", make_plan(req))
    except MemoryError:
        limit = f"{memory_bytes / 2**30:g} GiB" if memory_bytes is not None else "the memory there is"
        answer = ("memory", f"the plan needs more than {limit} of memory; split the request"
                            " (fewer models, variants or classes) or raise the service's --max-memory")
    except PlanTimeout as exc:
        answer = ("timeout", str(exc))
    except PlanInfeasible as exc:
        answer = ("infeasible", str(exc))
    except Exception as exc:  # reported to the caller, who logs it
        answer = ("error", f"{type(exc).__name__}: {exc}")
    conn.send(answer)
    conn.close()


async def plan_in_child(req: PlanRequest, deadline_s: float, memory_bytes: int | None = None) -> Plan:
    """``make_plan(req)`` in a child of at most ``memory_bytes`` of address space; PlanTimeout once
    ``deadline_s`` has passed (the child is killed), PlanInfeasible as the plan's own, PlanTooLarge
    past the memory, PlannerCrashed for anything else."""
    receive, send = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_solve, args=(req, send, memory_bytes), daemon=True)
    await asyncio.to_thread(child.start)  # a round trip to the fork server
    send.close()
    answer = asyncio.ensure_future(asyncio.to_thread(receive.recv))
    try:
        done, _ = await asyncio.wait({answer}, timeout=deadline_s)
        if not done:
            raise PlanTimeout(f"no plan within {deadline_s:g} s: the solve was stopped; lower time_limit_s or "
                              "simplify the request")
        try:
            kind, payload = answer.result()
        except EOFError:
            kind, payload = "ended", None
    finally:
        if child.is_alive():
            child.kill()
        await asyncio.gather(answer, return_exceptions=True)  # the reader ends at the child's exit
        await asyncio.to_thread(child.join)
        receive.close()
    if kind == "ended":  # joined by now: its exit code is known
        hint = f"; out of its {memory_bytes / 2**30:g} GiB of memory?" if memory_bytes is not None else ""
        raise PlannerCrashed(f"the planner's process ended without an answer (exit code {child.exitcode}{hint})")
    if kind == "plan":
        assert isinstance(payload, Plan)
        return payload
    if kind == "timeout":
        raise PlanTimeout(payload)
    if kind == "infeasible":
        raise PlanInfeasible(payload)
    if kind == "memory":
        raise PlanTooLarge(payload)
    raise PlannerCrashed(payload)
