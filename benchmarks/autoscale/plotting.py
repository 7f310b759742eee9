"""Plot helpers shared by the autoscale figures."""

from __future__ import annotations

from typing import Any

_PERCENT_TICKS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def percent_symlog(ax: Any, top: float | None = None) -> None:
    """A % axis, linear to 1% and logarithmic above (the start-up minutes' misses would flatten the
    rest), with plain tick labels (matplotlib's default writes 10^0)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    ax.set_yscale("symlog", linthresh=1.0)
    if top is not None:
        ax.set_ylim(0, top)
    ax.yaxis.set_major_locator(FixedLocator(list(_PERCENT_TICKS)))
    ax.yaxis.set_minor_locator(FixedLocator([]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}%"))
