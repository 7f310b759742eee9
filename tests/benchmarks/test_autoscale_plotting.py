"""The % axis of the autoscale figures: plain labels on a symlog scale."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.autoscale.plotting import percent_symlog


def test_the_percent_axis_reads_in_plain_percent() -> None:
    fig, ax = plt.subplots()
    try:
        ax.plot([0, 1, 2], [0.0, 0.4, 2.5])
        percent_symlog(ax, top=100.0)
        fig.canvas.draw()
        assert ax.get_yscale() == "symlog"
        assert ax.get_ylim() == (0.0, 100.0)
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert labels == ["0%", "0.1%", "0.3%", "1%", "3%", "10%", "30%", "100%"]
    finally:
        plt.close(fig)
