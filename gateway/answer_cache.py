"""Answers about the pool that clients may ask for at any rate (a model's metadata, a version's
readiness), kept for a short while and shared by concurrent askers.

Why: each such request costs the gateway a call to an instance; without this, a client asking in
a loop sends the same load to the instances, which are busy serving queries. With it, a flood of
them reaches the instances as at most one call per question and period. Answers that are errors
about the request (a version no instance has) are kept too; ``Unavailable`` (no instance
answered) is not, so the next asker tries again.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway.errors import Unavailable

V = TypeVar("V")
MAX_ENTRIES = 256  # the questions name a model and a version from the client: bounded


@dataclass(slots=True)
class _Entry:
    task: asyncio.Task[Any]
    expires: float = float("inf")  # set when the answer arrives


class AnswerCache(Generic[V]):
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[Hashable, _Entry] = {}

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        """The answer to ``key``: the one kept or under way, else ``fetch()``'s (a client that
        goes away leaves it running for the others)."""
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self._clock():
            entry = _Entry(asyncio.ensure_future(fetch()))
            self._entries[key] = entry
            entry.task.add_done_callback(functools.partial(self._answered, key, entry))
            self._evict()
        result: V = await asyncio.shield(entry.task)
        return result

    def _answered(self, key: Hashable, entry: _Entry, _: asyncio.Task[Any]) -> None:
        failed = not entry.task.cancelled() and isinstance(entry.task.exception(), Unavailable)
        if entry.task.cancelled() or failed:
            if self._entries.get(key) is entry:
                del self._entries[key]
        else:
            entry.expires = self._clock() + self.ttl_s

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            del self._entries[key]
        while len(self._entries) > MAX_ENTRIES:  # the oldest first (dicts keep their order)
            oldest = next(iter(self._entries))
            del self._entries[oldest]  # an answer under way still reaches its askers
