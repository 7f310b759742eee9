"""A bound on the bytes of request bodies being received, across all connections at once.

Each body is bounded by ``max_body_bytes`` and by the body timeout, but many connections sending
large bodies slowly add up. Past the budget, the bodies still arriving that hold the most bytes
are evicted to make room (the one evicted gets a 408): a client that sends a small body is not
refused because others hold large unfinished ones.

Large bodies are also paced: while two or more bodies are past their first ``pace_after`` bytes,
those bytes share one rate, and a read waits for its turn before it takes its next chunk. The
socket's buffer then fills and TCP slows the senders, instead of the event loop spending its
turns on a burst of large bodies while small queries wait. A small body, or one large body alone,
never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

_BURST_S = 0.005  # this much of the shared rate passes without waiting


@dataclass(eq=False, slots=True)
class BodyRead:
    task: asyncio.Task[object] | None
    held: int = 0
    evicted: bool = False


class BodyBudget:
    def __init__(
        self,
        limit: int,
        pace_bytes_per_s: float = 0.0,
        pace_after: int = 256 * 1024,
        on_evict: Callable[[], None] | None = None,
        on_paced: Callable[[float], None] | None = None,
    ) -> None:
        """``pace_bytes_per_s`` 0: no pacing."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if pace_bytes_per_s < 0 or pace_after < 0:
            raise ValueError("pace_bytes_per_s and pace_after must be >= 0")
        self.limit = limit
        self.used = 0
        self.evictions = 0
        self.paced_s = 0.0  # time reads waited for their turn, in all
        self.pace_bytes_per_s = pace_bytes_per_s
        self.pace_after = pace_after
        self._on_evict = on_evict
        self._on_paced = on_paced
        self._reads: set[BodyRead] = set()
        self._large = 0  # reads past pace_after
        self._next_s = 0.0  # when the paced bytes scheduled so far will have passed

    def open(self) -> BodyRead:
        read = BodyRead(asyncio.current_task())
        self._reads.add(read)
        return read

    def take(self, read: BodyRead, n: int) -> bool:
        """Reserve ``n`` more bytes for ``read``, evicting the largest other reads if needed;
        False if they do not fit even so."""
        if self.used + n > self.limit:
            self._evict(read, self.used + n - self.limit)
            if self.used + n > self.limit:
                return False
        if read.held <= self.pace_after < read.held + n:
            self._large += 1
        self.used += n
        read.held += n
        return True

    async def pace(self, read: BodyRead, n: int) -> None:
        """Wait for the turn of ``n`` bytes just taken by ``read``, if it and another read are both
        past their first ``pace_after`` bytes."""
        if not self.pace_bytes_per_s or read.held <= self.pace_after or self._large < 2:
            return
        now = asyncio.get_running_loop().time()
        self._next_s = max(self._next_s, now) + n / self.pace_bytes_per_s
        delay = self._next_s - now - _BURST_S
        if delay > 0:
            self.paced_s += delay
            if self._on_paced is not None:
                self._on_paced(delay)
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # evicted or timed out: its turn goes to the reads after it
                self._next_s -= n / self.pace_bytes_per_s
                raise

    def close(self, read: BodyRead) -> None:
        """The body is in (or failed): its bytes are no longer counted here."""
        if read in self._reads and read.held > self.pace_after:
            self._large -= 1
        self._reads.discard(read)
        self.used -= read.held
        read.held = 0

    def _evict(self, requester: BodyRead, need: int) -> None:
        others = sorted((r for r in self._reads if r is not requester), key=lambda r: r.held, reverse=True)
        for read in others:
            if need <= 0 or read.held <= requester.held:
                return  # never evict a smaller body for a larger one
            read.evicted = True
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict()
            need -= read.held
            self.close(read)
            if read.task is not None:
                read.task.cancel()
