"""Timeouts that hold their verdict until the event loop has read its sockets.

Why: when the process stalls (a long collector pass, its cgroup's CPU quota spent, a paused VM,
SIGSTOP), every timer that came due meanwhile fires in the loop's first turn after it, and in
that turn timers run before the poll: answers that came in time, still unread in the sockets,
lose to their own timeouts. The core then takes every instance that held a query out of
rotation (a 3 s stop emptied the pool, then the gateway answered 503 for a probe interval).
A verdict here waits until a poll has run after its deadline, and the wake-ups that poll
scheduled (the task that takes the answer) have run: a few ms more for a real timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# Past the deadline, a timer due this long after: it fires in a later turn, after a poll.
POLL_DELAY_S = 0.005
# A deadline timer this late found the loop stalled: give threads that read for it (grpc.aio's)
# time to catch up too.
STALL_S = 0.05
STALLED_DELAY_S = 0.1


class IoTimeout:
    """``callback(*args)`` once ``when`` (the loop's time) has passed and the loop has since read
    its sockets; ``cancel`` stops it at any stage."""

    __slots__ = ("_args", "_callback", "_handle", "_loop", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[..., Any], *args: Any) -> None:
        self._loop = loop
        self._callback = callback
        self._args = args
        self._when = when
        self._handle: asyncio.Handle = loop.call_at(when, self._due)

    def cancel(self) -> None:
        self._handle.cancel()

    def _due(self) -> None:
        # Due timers run before the poll of their turn: this one runs in a later turn.
        late = self._loop.time() - self._when
        self._handle = self._loop.call_later(STALLED_DELAY_S if late > STALL_S else POLL_DELAY_S, self._polled)

    def _polled(self) -> None:
        # Behind the callbacks that the poll scheduled, which deliver what it read (one hop: a
        # reader that adds another queue between the socket and the verdict needs more).
        self._handle = self._loop.call_soon(self._callback, *self._args)


class io_timeout_at:
    """``async with io_timeout_at(loop, when):`` as ``asyncio.timeout_at``, with the verdict held
    as ``IoTimeout`` holds it: the block's task is cancelled, and TimeoutError raised out of the
    block, only once a poll after ``when`` has found nothing to finish it."""

    __slots__ = ("_cancelling", "_expired", "_loop", "_task", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        self._when = when
        self._expired = False

    async def __aenter__(self) -> io_timeout_at:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("io_timeout_at must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._timer = IoTimeout(self._loop, self._when, self._expire)
        return self

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._timer.cancel()
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
