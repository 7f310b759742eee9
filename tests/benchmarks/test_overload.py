"""The overload benchmark's reading of the gateway's refusal histogram."""

from __future__ import annotations

from benchmarks.overload import refusal_buckets

METRICS = """# HELP kairos_refusal_duration_seconds From a request's arrival to its refusal
kairos_refusal_duration_seconds_bucket{le="1e-05"} 0.0
kairos_refusal_duration_seconds_bucket{le="0.0001"} 90.0
kairos_refusal_duration_seconds_bucket{le="0.001"} 99.0
kairos_refusal_duration_seconds_bucket{le="0.005"} 100.0
kairos_refusal_duration_seconds_bucket{le="+Inf"} 100.0
"""


def test_the_p99_and_the_last_bucket_used() -> None:
    assert refusal_buckets(METRICS) == (1.0, 5.0)


def test_no_refusal_is_none() -> None:
    assert refusal_buckets(METRICS.replace(" 100.0", " 0.0").replace(" 99.0", " 0.0").replace(" 90.0", " 0.0")) == (
        None,
        None,
    )
    assert refusal_buckets("") == (None, None)
