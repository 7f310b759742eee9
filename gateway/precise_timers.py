"""Timers that fire within tens of µs of their time, from one Linux timerfd per event loop.

Why: uvloop's (libuv's) timers count whole milliseconds and fire up to ~0.5 ms early or ~1 ms
late. An emulated instance (``servers.instance``) that waited out its drawn service time on them
was off by 0.27 ms at the median and 1.1 ms at the p99 (``python -m benchmarks.server_fidelity``);
``kairos-loadgen`` sent its queries 0.56 ms after their scheduled time at the median, 1.1 ms at
the p95. With a 35 ms QoS (dien) both decide which queries miss. A timerfd armed at the absolute
time (``CLOCK_MONOTONIC``: the clock of ``time.perf_counter`` and ``time.monotonic`` on Linux)
makes the loop's own poll return then: no busy wait, no thread.

Where there is no timerfd (not Linux, or a libc without it), ``sleep_until`` falls back to the
loop's timers, as close as they allow. The gateway's own decision timer stays on the loop's
timers: on the timerfd it cost a syscall or two per re-arm, and live dien showed no gain.
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


class TimerHandle:
    """A callback due at a time on ``clock`` (kept in the heap entry); ``cancel`` keeps it from
    running."""

    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[object, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerFd:
    """The timers of one event loop, run by one timerfd armed at the earliest of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, libc: ctypes.CDLL) -> None:
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._libc = libc
        self._fd = fd
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._armed_at = float("inf")
        self._spec = _ITimerspec()
        # The loop holds this object (its reader) and this object never holds the loop, so a
        # finished loop takes it along and the finalizer closes the fd.
        loop.add_reader(fd, self._on_expiry)
        weakref.finalize(self, os.close, fd)

    def call_at(self, when: float, callback: Callable[..., object], *args: object) -> TimerHandle:
        """Run ``callback(*args)`` on the loop once ``clock() >= when`` (seconds)."""
        handle = TimerHandle(callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        if when < self._armed_at:
            self._arm(when)
        return handle  # cancelled: its entry stays in the heap and is skipped when due

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= clock():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        handle = self.call_at(deadline, _wake, future)
        try:
            await future
        finally:
            handle.cancel()

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
            handle = heapq.heappop(heap)[2]
            if handle.cancelled:
                continue
            try:
                handle.callback(*handle.args)
            except Exception as exc:  # as the loop does for its own timers: report, go on
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"exception in timer callback {handle.callback!r}", "exception": exc}
                )
        if heap:
            self._arm(heap[0][0])


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_timerfds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerFd] = weakref.WeakKeyDictionary()


def loop_timerfd() -> TimerFd | None:
    """The running loop's timerfd, made on first use; None where there is none."""
    if _libc is None:
        return None
    loop = asyncio.get_running_loop()
    timers = _timerfds.get(loop)
    if timers is None:
        try:
            timers = TimerFd(loop, _libc)
        except (OSError, NotImplementedError):
            return None
        _timerfds[loop] = timers
    return timers


async def sleep_until(deadline: float) -> None:
    """Sleep until ``clock() >= deadline`` (seconds on ``clock``), to within tens of µs where
    the loop is free to wake then."""
    timers = loop_timerfd()
    if timers is not None:
        await timers.sleep_until(deadline)
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
