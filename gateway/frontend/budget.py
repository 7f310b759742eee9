"""A bound on the bytes of request bodies being received, across all connections at once.

Each body is bounded by ``max_body_bytes`` and by the body timeout, but many connections sending
large bodies slowly add up. Past the budget, the bodies still arriving that hold the most bytes
are evicted to make room (the one evicted gets a 408): a client that sends a small body is not
refused because others hold large unfinished ones.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class BodyRead:
    task: asyncio.Task[object] | None
    held: int = 0
    evicted: bool = False


class BodyBudget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.used = 0
        self.evictions = 0
        self._reads: set[BodyRead] = set()

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
        self.used += n
        read.held += n
        return True

    def close(self, read: BodyRead) -> None:
        """The body is in (or failed): its bytes are no longer counted here."""
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
            need -= read.held
            self.close(read)
            if read.task is not None:
                read.task.cancel()
