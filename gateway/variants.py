"""Model variants as kinds of instance: an instance of variant V on type T is estimated from the
profile (V, T) and routed as one more kind of heterogeneity. A kind is named by its type alone
for the model's own variant (so a model without variants is exactly as before) and ``V/T``
otherwise ("/" is never in a model or type name)."""

from __future__ import annotations

from gateway.errors import ConfigError

SEPARATOR = "/"


def kind_of(model: str, variant: str | None, type_name: str) -> str:
    return type_name if variant is None or variant == model else f"{variant}{SEPARATOR}{type_name}"


def split_kind(model: str, kind: str) -> tuple[str, str]:
    """(variant, instance type) of a kind of ``model``."""
    variant, sep, type_name = kind.rpartition(SEPARATOR)
    return (variant, type_name) if sep else (model, kind)


def parse_accuracy(spec: str, flag: str = "--accuracy") -> tuple[tuple[str, float], ...]:
    """``rm2=0.80,rm2-small=0.70``: each variant's accuracy, a fraction in [0, 1]."""
    out = []
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        try:
            acc = float(value)
        except ValueError:
            acc = -1.0
        if not sep or not name.strip() or not 0.0 <= acc <= 1.0:
            raise ConfigError(f"{flag} {spec!r}: expected VARIANT=ACC[,VARIANT=ACC...] with ACC in [0, 1]")
        out.append((name.strip(), acc))
    return tuple(out)
