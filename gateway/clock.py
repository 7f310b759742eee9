"""The clock the live core reads: its time (ms) and its timers, on one monotonic scale.

``LoopClock`` is the real one: ``time.monotonic`` and the running event loop's timers (which run
on that clock). ``ManualClock`` moves only when told to (``advance``) and fires the timers that
come due, in order: core tests reach a state by moving time instead of sleeping through it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now_ms(self) -> float:
        """Monotonic time, ms."""
        ...

    def call_at(self, when_ms: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` once ``now_ms()`` reaches ``when_ms``."""
        ...


class LoopClock:
    """``time.monotonic`` and the running loop's timers. Why not ``loop.time()`` for the time:
    uvloop reads it once per loop iteration and moves it in whole ms (docs/decisions.md, D1)."""

    def now_ms(self) -> float:
        return time.monotonic() * 1000.0

    def call_at(self, when_ms: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return asyncio.get_running_loop().call_at(when_ms / 1000.0, callback, *args)


class _ManualTimer:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    def __init__(self, start_ms: float = 1_000_000.0) -> None:
        self._now = start_ms
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def now_ms(self) -> float:
        return self._now

    def call_at(self, when_ms: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        timer = _ManualTimer(callback, args)
        heapq.heappush(self._timers, (when_ms, next(self._seq), timer))
        return timer

    def advance(self, ms: float) -> int:
        """Move time forward by ``ms``, firing every timer due by then at its own time, in order;
        returns how many fired."""
        end = self._now + ms
        fired = 0
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.callback(*timer.args)
            fired += 1
        self._now = end
        return fired

    @property
    def pending_timers(self) -> int:
        return sum(not t.cancelled for _, _, t in self._timers)


def start_at_problem(unix_s: float) -> str | None:
    """Why ``unix_s`` is no start time for processes that begin together (``--start-at``), or None."""
    if math.isfinite(unix_s) and unix_s < time.time() + 86_400:
        return None
    return f"--start-at {unix_s:g}: expected a Unix time (seconds) within the next day"
