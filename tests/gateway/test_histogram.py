"""LoopHistogram renders what prometheus_client's Histogram renders for the same observations."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.histogram import LoopHistogram

BUCKETS = (0.001, 0.005, 0.01, 0.05)
VALUES = (0.0, 0.0005, 0.001, 0.001, 0.003, 0.005, 0.0099, 0.01, 0.2, 7.0, -1.0)


def _render(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line for line in lines if not line.startswith("#") and "_created" not in line)


def test_same_exposition_as_prometheus_client_with_labels_and_boundary_values() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("t_seconds", "doc", ["model", "protocol"], buckets=BUCKETS, registry=ours)
    ref = Histogram("t_seconds", "doc", ["model", "protocol"], buckets=BUCKETS, registry=theirs)
    for k, v in enumerate(VALUES):
        labels = ("rm2", "grpc" if k % 3 else "http")
        mine.labels(*labels).observe(v)
        ref.labels(*labels).observe(v)
    assert _render(ours) == _render(theirs)
    assert 'le="0.001",model="rm2",protocol="grpc"' in "".join(_render(ours))
    assert mine.labels("rm2", "grpc").count + mine.labels("rm2", "http").count == len(VALUES)


def test_unlabelled_histogram_renders_zeros_before_its_first_observation() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("d_seconds", "doc", buckets=BUCKETS, registry=ours)
    Histogram("d_seconds", "doc", buckets=BUCKETS, registry=theirs)
    assert _render(ours) == _render(theirs) and "d_seconds_count 0.0" in _render(ours)
    mine.observe(0.002)
    assert "d_seconds_count 1.0" in _render(ours) and 'd_seconds_bucket{le="0.005"} 1.0' in _render(ours)


def test_bad_buckets_and_label_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        LoopHistogram("x", "doc", buckets=())
    with pytest.raises(ValueError, match="buckets"):
        LoopHistogram("x", "doc", buckets=(0.1, 0.1))
    h = LoopHistogram("x", "doc", ["model"], buckets=(0.1,))
    with pytest.raises(ValueError, match="labels"):
        h.labels("rm2", "extra")
