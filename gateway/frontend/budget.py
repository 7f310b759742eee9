"""A bound on the bytes of request bodies being received, across all connections at once.

Each body is bounded by ``max_body_bytes`` and by the body timeout, but many connections sending
large bodies slowly add up. Past the budget, the oldest body still arriving (the slowest client,
once it has had ``min_age_s``) is evicted to make room: a client that sends its body at once is
not refused because others send theirs slowly. When nothing can be evicted, the new chunk is
refused.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class BodyRead:
    task: asyncio.Task[object] | None
    started: float = field(default_factory=time.monotonic)
    held: int = 0
    evicted: bool = False


class BodyBudget:
    def __init__(self, limit: int, min_age_s: float = 0.5) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.min_age_s = min_age_s
        self.used = 0
        self.evictions = 0
        self._reads: dict[BodyRead, None] = {}  # insertion order: oldest first

    def open(self) -> BodyRead:
        read = BodyRead(asyncio.current_task())
        self._reads[read] = None
        return read

    def take(self, read: BodyRead, n: int) -> bool:
        """Reserve ``n`` more bytes for ``read``, evicting older slow reads if needed; False if
        they do not fit even so."""
        if self.used + n > self.limit:
            self._evict(read, self.used + n - self.limit)
            if self.used + n > self.limit:
                return False
        self.used += n
        read.held += n
        return True

    def close(self, read: BodyRead) -> None:
        """The body is in (or failed): its bytes are no longer counted here."""
        self._reads.pop(read, None)
        self.used -= read.held
        read.held = 0

    def _evict(self, requester: BodyRead, need: int) -> None:
        now = time.monotonic()
        for read in list(self._reads):
            if need <= 0 or now - read.started < self.min_age_s:
                return  # the rest are younger still
            if read is requester or read.evicted:
                continue
            read.evicted = True
            self.evictions += 1
            need -= read.held
            self.close(read)
            if read.task is not None:
                read.task.cancel()
