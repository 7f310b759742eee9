"""Pool events for the simulator: instances added (after a start-up delay), drained, removed.

On the command line (``kairos-sim --event``), one event per flag:

    T:add:TYPE[:STARTUP_MS][:NAME]    at T ms an instance of TYPE is started; it serves from T + STARTUP_MS
    T:drain:NAME                      at T ms NAME takes no new query (finishes what it holds)
    T:remove:NAME                     drained, and gone once it holds nothing
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import ConfigError

ADD, DRAIN, REMOVE = "add", "drain", "remove"


@dataclass(frozen=True, slots=True)
class PoolEvent:
    at_ms: float
    action: str  # ADD, DRAIN or REMOVE
    name: str
    type: str = ""  # ADD only
    startup_ms: float = 0.0  # ADD only: from the start to serving


def parse_event(spec: str, added: Counter[str] | None = None) -> PoolEvent:
    """One ``--event`` value; ``added`` counts the instances added per type so far (for names)."""
    parts = spec.split(":")
    try:
        at = float(parts[0])
    except ValueError:
        at = -1.0
    if len(parts) < 3 or not at >= 0 or parts[1] not in (ADD, DRAIN, REMOVE) or not parts[2]:
        raise ConfigError(
            f"--event {spec!r}: expected T:add:TYPE[:STARTUP_MS][:NAME], T:drain:NAME or T:remove:NAME (T in ms)"
        )
    action = parts[1]
    if action != ADD:
        if len(parts) != 3:
            raise ConfigError(f"--event {spec!r}: expected T:{action}:NAME")
        return PoolEvent(at, action, parts[2])
    type_name = parts[2]
    startup = 0.0
    if len(parts) > 3 and parts[3]:
        try:
            startup = float(parts[3])
        except ValueError:
            startup = -1.0
        if not startup >= 0:
            raise ConfigError(f"--event {spec!r}: the start-up delay must be a number of ms >= 0")
    if len(parts) > 5:
        raise ConfigError(f"--event {spec!r}: expected T:add:TYPE[:STARTUP_MS][:NAME]")
    added = added if added is not None else Counter()
    name = parts[4] if len(parts) > 4 and parts[4] else f"{type_name}-added-{added[type_name]}"
    added[type_name] += 1
    return PoolEvent(at, ADD, name, type_name, startup)


def parse_events(specs: Sequence[str]) -> list[PoolEvent]:
    added: Counter[str] = Counter()
    return [parse_event(s, added) for s in specs]


def check_events(events: Sequence[PoolEvent], initial: Sequence[str]) -> None:
    """Each add names an instance never seen in the run, and each drain or remove one in the pool
    by then (in time order, an add counted from when it joins) and not removed before."""
    seen, live = set(initial), set(initial)
    for e in sorted(events, key=lambda e: e.at_ms + (e.startup_ms if e.action == ADD else 0.0)):
        if e.action == ADD:
            if e.name in seen:
                raise ConfigError(f"pool event at {e.at_ms:g} ms: the name {e.name!r} is already used in this run")
            seen.add(e.name)
            live.add(e.name)
        elif e.name not in live:
            raise ConfigError(f"pool event at {e.at_ms:g} ms: no instance named {e.name!r} to {e.action}")
        elif e.action == REMOVE:
            live.discard(e.name)
