"""The latency profile a (model, instance type) starts from when nobody has profiled it.

Conservative: a quarter of the QoS at batch 1, rising linearly to half the QoS at the largest
batch, so the dispatcher routes cautiously but admission does not refuse the first queries it
needs to learn from. The estimator replaces it with observed service times, batch bucket by
bucket, from the first answer on (``LatencyEstimator.observe``); ``kairos-profile`` measures a
real one.
"""

from __future__ import annotations

import numpy as np

from gateway.profiles.profile import LatencyProfile

SOURCE = "prior"


def prior_profile(model: str, instance_type: str, qos_ms: float, max_batch: int) -> LatencyProfile:
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_batch == 1:  # a model that does not batch: batch 1 only, and admission holds it there
        batches, means = np.array([1.0]), np.array([qos_ms / 4.0])
    else:
        batches = np.array([1.0, float(max_batch)])
        means = np.array([qos_ms / 4.0, qos_ms / 2.0])
    return LatencyProfile(
        model=model,
        instance_type=instance_type,
        batches=batches,
        means=means,
        levels=np.array([0.0, 1.0]),
        quantiles=np.stack([means, means], axis=1),
    )
