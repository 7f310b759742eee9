"""The shipped variant set: real accuracies and profiles that order as the models' sizes do."""

from __future__ import annotations

import pytest

from gateway.errors import ProfileError
from gateway.profiles.variants import load_variant_set


def test_the_digits_variants_trade_accuracy_for_speed() -> None:
    s = load_variant_set("digits")
    assert [v.model for v in s.variants] == ["digits-rf8", "digits-rf64", "digits-rf512"]
    accuracy = [v.accuracy for v in s.variants]
    latency = [s.profiles.get(v.model, s.instance_type).mean(32) for v in s.variants]
    assert all(0.9 < a <= 1.0 for a in accuracy) and accuracy == sorted(accuracy)
    assert latency == sorted(latency) and latency[-1] > 5 * latency[0]


def test_an_unknown_set_names_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="no variant set 'mnist'; shipped: digits"):
        load_variant_set("mnist")
