"""A bound on the request bytes the HTTP front end holds across all connections at once.

Each body is bounded by ``max_body_bytes`` and each connection by its read timeouts, but many
connections sending large bodies slowly (or holding queries in the queue) add up: past this
budget a request is refused with 503 instead of the process growing without bound.
"""

from __future__ import annotations


class ByteBudget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) if that would pass the limit."""
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
