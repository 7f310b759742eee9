"""Outlier detection on answers, as Envoy's ``consecutive_5xx``: an instance leaves the rotation
after ``threshold`` error answers in a row (5xx, gRPC INTERNAL), any good answer resets its
count. Why not at the first: an error answer may be the request's fault (MLServer answers 500 to
a wrong feature count), and one bad client must not empty the pool. Failures with no answer at
all (refused, reset, timeout) are the instance's alone and eject it at once (``GatewayCore``)."""

from __future__ import annotations

DEFAULT_CONSECUTIVE_ERRORS = 5


class ConsecutiveErrors:
    def __init__(self, threshold: int = DEFAULT_CONSECUTIVE_ERRORS) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        self._count: dict[str, int] = {}  # by instance name

    def record(self, instance: str, error: bool) -> bool:
        """Count one answer of ``instance``; True when it should leave the rotation now."""
        if not error:
            if instance in self._count:
                del self._count[instance]
            return False
        n = self._count.get(instance, 0) + 1
        if n >= self.threshold:
            del self._count[instance]
            return True
        self._count[instance] = n
        return False

    def reset(self, instance: str) -> None:
        self._count.pop(instance, None)
