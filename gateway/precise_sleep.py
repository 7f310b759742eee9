"""Sleeps that end within tens of µs of their deadline, from one Linux timerfd per event loop.

Why: uvloop's (libuv's) timers count whole milliseconds and fire up to ~0.5 ms early or ~1 ms
late. An emulated instance (``servers.instance``) that waited out its drawn service time on them
was off by 0.27 ms at the median and 1.1 ms at the p99 (``python -m benchmarks.server_fidelity``),
and ``kairos-loadgen`` sent its queries 0.56 ms after their scheduled time at the median, 1.1 ms
at the p95; with a 35 ms QoS (dien) both decide which queries miss. A timerfd armed at the
absolute deadline (``CLOCK_MONOTONIC``: the clock of ``time.perf_counter`` and
``time.monotonic`` on Linux) makes the loop's own poll return then: no busy wait, no thread.

Where there is no timerfd (not Linux, or a libc without it), ``sleep_until`` falls back to the
loop's timers, as close as they allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import itertools
import os
import sys
import time
import weakref
from collections.abc import Awaitable, Callable

clock = time.perf_counter  # CLOCK_MONOTONIC on Linux: the timerfd's clock

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.timerfd_settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


class TimerFdSleeper:
    """The sleepers of one event loop, woken by one timerfd armed at the earliest deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, libc: ctypes.CDLL) -> None:
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._libc = libc
        self._fd = fd
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._armed_at = float("inf")
        self._spec = _ITimerspec()
        # The loop holds the sleeper (its reader) and the sleeper never holds the loop, so a
        # finished loop takes it along and the finalizer closes the fd.
        loop.add_reader(fd, self._on_expiry)
        weakref.finalize(self, os.close, fd)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= clock():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (deadline, next(self._seq), future))
        if deadline < self._armed_at:
            self._arm(deadline)
        await future  # cancelled: its entry stays in the heap and is skipped when due

    def _arm(self, deadline: float) -> None:
        seconds = int(deadline)
        self._spec.it_value.tv_sec = seconds
        self._spec.it_value.tv_nsec = int((deadline - seconds) * 1e9)
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed_at = deadline

    def _on_expiry(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)  # the expiry count; reading it clears the fd's readiness
        self._armed_at = float("inf")
        heap = self._heap
        now = clock()
        while heap and heap[0][0] <= now:
            future = heapq.heappop(heap)[2]
            if not future.done():
                future.set_result(None)
        if heap:
            self._arm(heap[0][0])


_sleepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerFdSleeper] = weakref.WeakKeyDictionary()


def timerfd_sleeper() -> TimerFdSleeper | None:
    """This loop's sleeper, made on first use; None where there is no timerfd."""
    if _libc is None:
        return None
    loop = asyncio.get_running_loop()
    sleeper = _sleepers.get(loop)
    if sleeper is None:
        try:
            sleeper = TimerFdSleeper(loop, _libc)
        except (OSError, NotImplementedError):
            return None
        _sleepers[loop] = sleeper
    return sleeper


async def sleep_until(deadline: float) -> None:
    """Sleep until ``clock() >= deadline`` (seconds on ``clock``), to within tens of µs where
    the loop is free to wake then."""
    sleeper = timerfd_sleeper()
    if sleeper is not None:
        await sleeper.sleep_until(deadline)
    else:
        await timer_sleep_until(deadline)


TIMERS = ("timerfd", "loop")  # how instances wait (``kairos-servers --timers``)


def sleeper_for(timers: str) -> Callable[[float], Awaitable[None]]:
    """``sleep_until`` for "timerfd" (falls back to the loop's timers where there is none), or
    ``timer_sleep_until`` for "loop"."""
    if timers not in TIMERS:
        raise ValueError(f"timers must be one of {', '.join(TIMERS)}, got {timers!r}")
    return sleep_until if timers == "timerfd" else timer_sleep_until


async def timer_sleep_until(deadline: float) -> None:
    """The fallback: the loop's own timers. They may fire up to 1 ms early, so sleep to 1 ms
    before the deadline, then the remainder: a few wake-ups at most, never a spin."""
    rem = deadline - clock()
    if rem > 0.002:
        await asyncio.sleep(rem - 0.001)
        rem = deadline - clock()
    for _ in range(3):
        if rem <= 0.0002:
            return
        await asyncio.sleep(rem)
        rem = deadline - clock()
