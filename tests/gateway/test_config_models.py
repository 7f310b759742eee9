"""Config with a ``models`` list: service classes, per-model pools and instances, the one-model
shorthand, and one clear error for each mistake."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import DEFAULT_CLASS, parse_config
from gateway.errors import ConfigError

POOL = [{"type": "r5n.large", "count": 2}]
TWO_MODELS: dict[str, Any] = {
    "models": [
        {
            "name": "rm2",
            "classes": [
                {"name": "premium", "qos_ms": 200, "attainment": 0.999, "priority": 2},
                {"name": "standard", "qos_ms": 350, "priority": 1},
                {"name": "batch", "qos_ms": 2000},
            ],
            "default_class": "standard",
            "pool": POOL,
        },
        {
            "name": "dien",
            "instances": [{"name": "d0", "type": "r5n.large", "http": "http://127.0.0.1:9"}],
        },
    ]
}


def test_a_models_list_gives_each_model_its_classes_and_pool() -> None:
    config = parse_config(TWO_MODELS)
    rm2, dien = config.models
    assert [c.name for c in rm2.classes] == ["premium", "standard", "batch"]
    assert rm2.default.name == "standard" and rm2.qos_ms == 350
    premium = rm2.service_class("premium")
    assert (premium.qos_ms, premium.attainment, premium.priority) == (200, 0.999, 2)
    assert rm2.service_class("batch").attainment == 0.99 and rm2.service_class("batch").priority == 0
    # No classes: one, "default", at the model's shipped target; the pool counts its instances.
    assert [c.name for c in dien.classes] == [DEFAULT_CLASS] and dien.qos_ms == 35
    assert [(e.type, e.count) for e in dien.pool] == [("r5n.large", 1)]
    # The single-model view reads the first model.
    assert config.model == "rm2" and config.qos_ms == 350 and config.pool_size == 2
    assert config.model_config("dien") is dien


def test_the_one_model_shorthand_is_one_model_with_a_default_class() -> None:
    config = parse_config({"model": "rm2", "qos_ms": 300, "pool": POOL})
    (model,) = config.models
    assert model.name == "rm2" and [(c.name, c.qos_ms) for c in model.classes] == [(DEFAULT_CLASS, 300)]


def with_model(**fields: Any) -> dict[str, Any]:
    return {"models": [{"name": "rm2", "pool": POOL, **fields}]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({**TWO_MODELS, "model": "rm2"}, r"^model: with a models list"),
        ({"models": []}, r"^models: expected a list of 1 to"),
        ({"models": {"rm2": {}}}, r"^models: expected a list"),
        ({"models": [{"name": "rm2", "pool": POOL}, {"name": "rm2", "pool": POOL}]}, r"model 'rm2' is listed twice"),
        (with_model(classes=[]), r"^models\[0\]\.classes: expected a list of 1 to"),
        (with_model(classes=[{"name": "a"}]), r"^models\[0\]\.classes\[0\]\.qos_ms: missing"),
        (with_model(classes=[{"name": "a", "qos_ms": 5, "attainment": 1.5}]), r"attainment: expected a fraction"),
        (with_model(classes=[{"name": "a", "qos_ms": 5, "priority": 1.5}]), r"priority: expected an integer"),
        (with_model(classes=[{"name": "a b", "qos_ms": 5}]), r"classes\[0\]\.name"),
        (with_model(classes=[{"name": "a", "qos_ms": 5}, {"name": "a", "qos_ms": 6}]), r"class 'a' is listed twice"),
        (with_model(classes=[{"name": "a", "qos_ms": 5}], default_class="b"), r"default_class: expected one of a"),
        (with_model(classes=[{"name": "a", "qos_ms": 5}], qos_ms=5), r"qos_ms: with classes"),
        (with_model(colour="red"), r"^models\[0\]\.colour: unknown field"),
        ({"models": [{"name": "mystery", "pool": POOL}]}, r"^models\[0\]\.qos_ms: missing; it is required"),
        ({"models": [{"name": "rm2"}]}, r"^models\[0\]\.pool: missing"),
        (
            {
                "models": [
                    {"name": "rm2", "instances": [{"name": "x", "type": "r5n.large", "http": "http://a:1"}]},
                    {"name": "dien", "instances": [{"name": "x", "type": "r5n.large", "http": "http://a:2"}]},
                ]
            },
            r"instance name 'x' is used twice",
        ),
    ],
)
def test_mistakes_are_named(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(doc)


def test_the_client_margin_must_fit_the_tightest_class() -> None:
    doc = {**TWO_MODELS, "gateway": {"client_margin_ms": 10}}
    assert parse_config(doc).gateway.client_margin_ms == 10
    with pytest.raises(ConfigError, match="client_margin_ms"):
        parse_config({**TWO_MODELS, "gateway": {"client_margin_ms": 40}})  # dien's target is 35 ms


def test_variants_with_their_accuracy_and_instances_of_each() -> None:
    config = parse_config(
        {
            "model": "rm2",
            "classes": [{"name": "fast", "qos_ms": 100}],
            "variants": [{"name": "rm2", "accuracy": 0.8}, {"name": "wnd", "accuracy": 0.7}, {"name": "mtwnd"}],
            "pool": [{"type": "r5n.large", "count": 2}, {"type": "r5n.large", "count": 1, "variant": "wnd"}],
            "instances": [{"type": "g4dn.xlarge", "http": "http://a:1", "variant": "wnd"}],
        }
    )
    (model,) = config.models
    assert model.variant_names == ["rm2", "wnd", "mtwnd"] and model.qos_ms == 100
    assert model.accuracy("wnd") == 0.7 and model.accuracy(None) == 0.8 and model.accuracy("mtwnd") is None
    assert model.instance_variants() == [("r5n.large", "rm2"), ("r5n.large", "rm2"), ("r5n.large", "wnd")]
    assert model.instances[0].variant == "wnd"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"variants": [{"name": "a", "accuracy": 1.5}]}, r"variants\[0\]\.accuracy: expected a fraction"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "variant 'a' is listed twice"),
        ({"variants": []}, r"variants: expected a list of 1 to"),
        ({"variants": [{"name": "a"}], "pool": [{"type": "r5n.large", "count": 1, "variant": "b"}]},
         r"pool\[0\]\.variant: expected one of the model's variants a, got 'b'"),
        ({"pool": [{"type": "r5n.large", "count": 1, "variant": "wnd"}]},
         r"expected one of the model's variants rm2, got 'wnd'"),
    ],
)
def test_variant_mistakes_are_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"model": "rm2", "pool": POOL, **fields})
