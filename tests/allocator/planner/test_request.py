"""Plan requests: every field the parser reads is checked, and a bad one is a PlanRequestError whose
message starts with the field's path; good requests parse into what they say and can be planned."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from allocator.planner.plan import make_plan
from allocator.planner.request import (
    DEFAULT_MAX_UTILISATION,
    MAX_CLASSES,
    MAX_COUNT,
    MAX_MODELS,
    MAX_PRICE,
    MAX_QUANTILES,
    MAX_RATE_QPS,
    MAX_REFINE_QUERIES,
    MAX_TARGET_MS,
    MAX_TYPES,
    MAX_VARIANTS,
    Load,
    PlanRequest,
    PlanRequestError,
    RefineOptions,
    parse_plan_request,
)
from allocator.planner.solve import PlanInfeasible
from gateway.errors import ConfigError
from gateway.profiles import ProfileSet

TYPES: list[dict[str, Any]] = [
    {
        "name": "g4dn.xlarge",
        "price_per_hour": 0.526,
        "accelerator": True,
        "available": 5,
        "startup_s": 90,
        "units": 4,
    },
    {"name": "c5n.2xlarge", "price_per_hour": 0.432, "available": 6},
    {"name": "r5n.large", "price_per_hour": 0.149, "available": 17},
    {"name": "t3.xlarge", "price_per_hour": 0.1664, "available": 15},
]

# Every section of the format in use, so that each case below changes one field of a valid request.
BASE: dict[str, Any] = {
    "types": TYPES,
    "models": [
        {"name": "rm2", "classes": [{"name": "default", "target_ms": 350}], "load": 100},
        {
            "name": "ncf",
            "variants": [
                {"name": "ncf", "accuracy": 0.9},
                {"name": "ncf-small", "profile": "wnd", "accuracy": 0.8},
            ],
            "classes": [
                {"name": "fast", "target_ms": 200},
                {"name": "bulk", "target_ms": 1000, "attainment": 0.9, "priority": -1, "utility_weight": 0.5},
            ],
            "load": {"fast": 10, "bulk": {"quantiles": {"0.5": 20, "0.9": 30}}},
            "batch_mix": "production",
        },
    ],
    "objective": {
        "kind": "min_cost",
        "load_quantile": 0.9,
        "cost_weight": 0,
        "fairness": 0,
        "allow_drops": True,
    },
    "current": [{"model": "rm2", "variant": "rm2", "type": "r5n.large", "count": 2}],
    "change_cost": {"start": 0.01, "stop": 0},
    "time_limit_s": 10,
    "budget_per_hour": 100,
    "max_units": 1000,
    "max_utilisation": 0.85,
    "refine": {"queries": 2000, "seed": 3, "margin": 0.4},
}

# A made-up latency profile in the profile-file format, on g4dn.xlarge only: fast enough for rm2's
# 350 ms target at every batch size of the production mix.
INLINE_PROFILES: dict[str, Any] = {
    "quantile_levels": [0.0, 0.5, 1.0],
    "types": {
        "g4dn.xlarge": {
            "batch": [1, 100, 1000],
            "mean": [5, 20, 100],
            "quantiles": [[4, 5, 7], [15, 20, 30], [80, 100, 150]],
        }
    },
}

DELETE = object()
Path = tuple[str | int, ...]
Edit = tuple[Path, Any]


def edited(*edits: Edit) -> dict[str, Any]:
    """A deep copy of BASE with each (path, value) set (DELETE: the field removed)."""
    raw = copy.deepcopy(BASE)
    for path, value in edits:
        node: Any = raw
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = copy.deepcopy(value)
    return raw


def parse(raw: Any, profiles: ProfileSet) -> PlanRequest:
    return parse_plan_request(raw, profiles)


def _types(n: int) -> list[dict[str, Any]]:
    return [{"name": f"t{i}", "price_per_hour": 1.0} for i in range(n)]


def _classes(n: int) -> list[dict[str, Any]]:
    return [{"name": f"c{i}", "target_ms": 350} for i in range(n)]


def _levels(n: int) -> dict[str, float]:
    return {f"{(i + 1) / (n + 2):.4f}": float(i) for i in range(n)}


M0, M1 = ("models", 0), ("models", 1)
V0, V1 = (*M1, "variants", 0), (*M1, "variants", 1)
C1 = (*M1, "classes", 1)
P0 = (*V0, "profiles")  # ncf's first variant's inline profiles
G0 = (*P0, "types", "g4dn.xlarge")
INLINE: Edit = (P0, INLINE_PROFILES)
BULK = (*M1, "load", "bulk")
NAN = math.nan
PROFILES = "models[1].variants[0].profiles"

# (id, edits, the path the message must start with)
CASES: list[tuple[str, list[Edit], str]] = [
    # the top level
    ("top-unknown", [(("frob",), 1)], "frob"),
    # types
    ("types-missing", [(("types",), DELETE)], "types"),
    ("types-empty", [(("types",), [])], "types"),
    ("types-not-list", [(("types",), {"name": "g4dn.xlarge"})], "types"),
    ("types-too-many", [(("types",), TYPES + _types(MAX_TYPES + 1 - len(TYPES)))], "types"),
    ("types-duplicate", [(("types",), [*TYPES, TYPES[2]])], "types"),
    ("type-not-object", [(("types", 0), "g4dn.xlarge")], "types[0]"),
    ("type-unknown-field", [(("types", 0, "gpus"), 1)], "types[0].gpus"),
    ("type-name-missing", [(("types", 0, "name"), DELETE)], "types[0].name"),
    ("type-name-bad", [(("types", 0, "name"), "g4dn xlarge!")], "types[0].name"),
    ("type-name-empty", [(("types", 0, "name"), "")], "types[0].name"),
    ("price-missing", [(("types", 0, "price_per_hour"), DELETE)], "types[0].price_per_hour"),
    ("price-negative", [(("types", 0, "price_per_hour"), -0.5)], "types[0].price_per_hour"),
    ("price-nan", [(("types", 0, "price_per_hour"), NAN)], "types[0].price_per_hour"),
    ("price-bool", [(("types", 0, "price_per_hour"), True)], "types[0].price_per_hour"),
    ("price-string", [(("types", 0, "price_per_hour"), "0.5")], "types[0].price_per_hour"),
    ("price-huge", [(("types", 0, "price_per_hour"), MAX_PRICE * 10)], "types[0].price_per_hour"),
    ("accelerator-string", [(("types", 0, "accelerator"), "yes")], "types[0].accelerator"),
    ("available-negative", [(("types", 1, "available"), -1)], "types[1].available"),
    ("available-float", [(("types", 1, "available"), 2.5)], "types[1].available"),
    ("available-string", [(("types", 1, "available"), "3")], "types[1].available"),
    ("available-bool", [(("types", 1, "available"), True)], "types[1].available"),
    ("available-over-max", [(("types", 1, "available"), MAX_COUNT + 1)], "types[1].available"),
    ("startup-negative", [(("types", 0, "startup_s"), -1)], "types[0].startup_s"),
    ("startup-nan", [(("types", 0, "startup_s"), NAN)], "types[0].startup_s"),
    ("units-zero", [(("types", 0, "units"), 0)], "types[0].units"),
    ("units-negative", [(("types", 0, "units"), -2)], "types[0].units"),
    # models
    ("models-missing", [(("models",), DELETE)], "models"),
    ("models-empty", [(("models",), [])], "models"),
    ("models-not-list", [(("models",), {"name": "rm2"})], "models"),
    ("models-too-many", [(("models",), [BASE["models"][0]] * (MAX_MODELS + 1))], "models"),
    ("models-duplicate", [((*M1, "name"), "rm2")], "models"),
    ("model-not-object", [(M0, "rm2")], "models[0]"),
    ("model-unknown-field", [((*M0, "replicas"), 3)], "models[0].replicas"),
    ("model-name-missing", [((*M0, "name"), DELETE)], "models[0].name"),
    ("model-name-bad", [((*M0, "name"), "rm 2")], "models[0].name"),
    ("model-no-shipped-profile", [((*M0, "name"), "bert")], "models[0].profile"),
    ("model-profile-unknown", [((*M0, "profile"), "bert")], "models[0].profile"),
    ("model-profile-not-string", [((*M0, "profile"), 5)], "models[0].profile"),
    ("model-accuracy-over-1", [((*M0, "accuracy"), 1.5)], "models[0].accuracy"),
    (
        "model-no-profile-on-listed-types",
        [(("types",), [{"name": "x1.custom", "price_per_hour": 1}]), (("current",), [])],
        "models[0]",
    ),
    ("variants-and-accuracy", [((*M1, "accuracy"), 0.5)], "models[1]"),
    ("variants-and-profile", [((*M1, "profile"), "ncf")], "models[1]"),
    ("variants-and-profiles", [((*M1, "profiles"), INLINE_PROFILES)], "models[1]"),
    ("variants-empty", [((*M1, "variants"), [])], "models[1].variants"),
    ("variants-not-list", [((*M1, "variants"), {"name": "ncf"})], "models[1].variants"),
    (
        "variants-too-many",
        [((*M1, "variants"), [{"name": f"v{i}", "profile": "ncf"} for i in range(MAX_VARIANTS + 1)])],
        "models[1].variants",
    ),
    ("variants-duplicate", [((*V1, "name"), "ncf")], "models[1].variants"),
    ("variant-not-object", [(V0, "ncf")], "models[1].variants[0]"),
    ("variant-unknown-field", [((*V0, "latency"), 3)], "models[1].variants[0].latency"),
    ("variant-name-bad", [((*V1, "name"), "ncf/small")], "models[1].variants[1].name"),
    ("variant-profile-unknown", [((*V1, "profile"), "bert")], "models[1].variants[1].profile"),
    (
        "variant-name-no-profile",
        [(V1, {"name": "mystery", "accuracy": 0.5})],
        "models[1].variants[1].profile",
    ),
    (
        "variant-no-profile-on-listed-types",
        [
            (
                (*V0, "profiles"),
                {**INLINE_PROFILES, "types": {"dev-2vcpu": INLINE_PROFILES["types"]["g4dn.xlarge"]}},
            )
        ],
        "models[1].variants[0]",
    ),
    ("variant-profiles-not-object", [((*V0, "profiles"), [1, 2])], PROFILES),
    (
        "variant-profiles-quantiles-shape",
        [INLINE, ((*G0, "quantiles"), [[4, 5], [15, 20], [80, 100]])],
        PROFILES,
    ),
    (
        "variant-profiles-quantiles-decreasing",
        [INLINE, ((*G0, "quantiles"), [[7, 5, 4], [15, 20, 30], [80, 100, 150]])],
        PROFILES,
    ),
    ("variant-profiles-mean-length", [INLINE, ((*G0, "mean"), [5, 20])], PROFILES),
    ("variant-profiles-batch-from-0", [INLINE, ((*G0, "batch"), [0, 100, 1000])], PROFILES),
    ("variant-profiles-levels", [INLINE, ((*P0, "quantile_levels"), [0.1, 0.5, 1.0])], PROFILES),
    ("variant-profiles-unit", [INLINE, ((*P0, "unit"), "s")], PROFILES),
    ("variant-profiles-no-types", [INLINE, ((*P0, "types"), {})], PROFILES),
    ("variant-accuracy-over-1", [((*V0, "accuracy"), 1.01)], "models[1].variants[0].accuracy"),
    ("variant-accuracy-negative", [((*V0, "accuracy"), -0.1)], "models[1].variants[0].accuracy"),
    ("variant-accuracy-string", [((*V0, "accuracy"), "high")], "models[1].variants[0].accuracy"),
    # classes
    ("classes-missing", [((*M0, "classes"), DELETE)], "models[0].classes"),
    ("classes-empty", [((*M0, "classes"), [])], "models[0].classes"),
    ("classes-not-list", [((*M0, "classes"), {"name": "default", "target_ms": 350})], "models[0].classes"),
    (
        "classes-too-many",
        [((*M0, "classes"), _classes(MAX_CLASSES + 1)), ((*M0, "load"), {"c0": 1})],
        "models[0].classes",
    ),
    ("classes-duplicate", [((*C1, "name"), "fast")], "models[1].classes"),
    ("class-not-object", [(C1, "bulk")], "models[1].classes[1]"),
    ("class-unknown-field", [((*C1, "qos_ms"), 100)], "models[1].classes[1].qos_ms"),
    ("class-name-missing", [((*C1, "name"), DELETE)], "models[1].classes[1].name"),
    ("class-name-bad", [((*C1, "name"), "bulk class")], "models[1].classes[1].name"),
    ("target-missing", [((*C1, "target_ms"), DELETE)], "models[1].classes[1].target_ms"),
    ("target-zero", [((*C1, "target_ms"), 0)], "models[1].classes[1].target_ms"),
    ("target-negative", [((*C1, "target_ms"), -10)], "models[1].classes[1].target_ms"),
    ("target-over-max", [((*C1, "target_ms"), MAX_TARGET_MS * 2)], "models[1].classes[1].target_ms"),
    ("target-string", [((*C1, "target_ms"), "200ms")], "models[1].classes[1].target_ms"),
    ("attainment-zero", [((*C1, "attainment"), 0)], "models[1].classes[1].attainment"),
    ("attainment-one", [((*C1, "attainment"), 1.0)], "models[1].classes[1].attainment"),
    ("attainment-over-one", [((*C1, "attainment"), 1.5)], "models[1].classes[1].attainment"),
    ("attainment-negative", [((*C1, "attainment"), -0.5)], "models[1].classes[1].attainment"),
    ("priority-over", [((*C1, "priority"), 1001)], "models[1].classes[1].priority"),
    ("priority-under", [((*C1, "priority"), -1001)], "models[1].classes[1].priority"),
    ("priority-float", [((*C1, "priority"), 1.5)], "models[1].classes[1].priority"),
    ("utility-weight-negative", [((*C1, "utility_weight"), -1)], "models[1].classes[1].utility_weight"),
    ("utility-weight-nan", [((*C1, "utility_weight"), NAN)], "models[1].classes[1].utility_weight"),
    # load
    ("load-missing", [((*M0, "load"), DELETE)], "models[0].load"),
    ("load-string", [((*M0, "load"), "100")], "models[0].load"),
    ("load-bool", [((*M0, "load"), True)], "models[0].load"),
    ("load-bare-negative", [((*M0, "load"), -1)], "models[0].load.default"),
    ("load-bare-over-max", [((*M0, "load"), MAX_RATE_QPS * 10)], "models[0].load.default"),
    ("load-number-several-classes", [((*M1, "load"), 5)], "models[1].load"),
    ("load-unknown-class", [((*M1, "load", "batch"), 3)], "models[1].load.batch"),
    ("load-negative", [((*M1, "load", "fast"), -1)], "models[1].load.fast"),
    ("load-over-max", [((*M1, "load", "fast"), MAX_RATE_QPS * 2)], "models[1].load.fast"),
    ("load-nan", [((*M1, "load", "fast"), NAN)], "models[1].load.fast"),
    ("load-list", [((*M1, "load", "fast"), [1, 2])], "models[1].load.fast"),
    ("load-object-unknown-field", [((*BULK, "mean"), 25)], "models[1].load.bulk.mean"),
    ("quantiles-missing", [(BULK, {})], "models[1].load.bulk.quantiles"),
    ("quantiles-not-object", [((*BULK, "quantiles"), [20, 30])], "models[1].load.bulk.quantiles"),
    ("quantiles-empty", [((*BULK, "quantiles"), {})], "models[1].load.bulk.quantiles"),
    (
        "quantiles-too-many",
        [((*BULK, "quantiles"), _levels(MAX_QUANTILES + 1))],
        "models[1].load.bulk.quantiles",
    ),
    ("quantiles-level-x", [((*BULK, "quantiles"), {"x": 20})], "models[1].load.bulk.quantiles.x"),
    ("quantiles-level-0", [((*BULK, "quantiles"), {"0": 5, "0.9": 30})], "models[1].load.bulk.quantiles.0"),
    ("quantiles-level-1", [((*BULK, "quantiles"), {"0.5": 5, "1": 30})], "models[1].load.bulk.quantiles.1"),
    ("quantiles-level-nan", [((*BULK, "quantiles"), {"nan": 5})], "models[1].load.bulk.quantiles.nan"),
    ("quantiles-falling", [((*BULK, "quantiles"), {"0.5": 30, "0.9": 20})], "models[1].load.bulk.quantiles"),
    ("quantiles-rate-negative", [((*BULK, "quantiles"), {"0.5": -1})], "models[1].load.bulk.quantiles.0.5"),
    ("quantiles-rate-bool", [((*BULK, "quantiles"), {"0.5": True})], "models[1].load.bulk.quantiles.0.5"),
    (
        "quantiles-rate-over-max",
        [((*BULK, "quantiles"), {"0.5": MAX_RATE_QPS * 2})],
        "models[1].load.bulk.quantiles.0.5",
    ),
    # batch_mix
    ("mix-number", [((*M0, "batch_mix"), 5)], "models[0].batch_mix"),
    ("mix-null", [((*M0, "batch_mix"), None)], "models[0].batch_mix"),
    ("mix-unknown", [((*M0, "batch_mix"), "poisson")], "models[0].batch_mix"),
    ("mix-fixed-0", [((*M0, "batch_mix"), "fixed:0")], "models[0].batch_mix"),
    ("mix-fixed-over", [((*M0, "batch_mix"), "fixed:1001")], "models[0].batch_mix"),
    ("mix-uniform-reversed", [((*M0, "batch_mix"), "uniform:50-10")], "models[0].batch_mix"),
    ("mix-uniform-garbled", [((*M0, "batch_mix"), "uniform:1-2-3")], "models[0].batch_mix"),
    # objective
    ("objective-not-object", [(("objective",), "min_cost")], "objective"),
    ("objective-kind-missing", [(("objective",), {})], "objective.kind"),
    ("objective-kind-unknown", [(("objective", "kind"), "max_profit")], "objective.kind"),
    ("objective-unknown-field", [(("objective", "horizon"), 3)], "objective.horizon"),
    ("objective-cost-weight-negative", [(("objective", "cost_weight"), -1)], "objective.cost_weight"),
    ("objective-fairness-over-1", [(("objective", "fairness"), 1.5)], "objective.fairness"),
    ("objective-fairness-negative", [(("objective", "fairness"), -0.1)], "objective.fairness"),
    ("objective-allow-drops-string", [(("objective", "allow_drops"), "no")], "objective.allow_drops"),
    ("objective-load-quantile-0", [(("objective", "load_quantile"), 0)], "objective.load_quantile"),
    ("objective-load-quantile-1", [(("objective", "load_quantile"), 1)], "objective.load_quantile"),
    (
        "objective-accuracy-variant-without",
        [(("objective", "kind"), "accuracy"), ((*M0, "accuracy"), 0.95), ((*V1, "accuracy"), DELETE)],
        "models[1].variants[1].accuracy",
    ),
    (
        "objective-accuracy-model-without",
        [(("objective", "kind"), "accuracy")],
        "models[0].accuracy",
    ),
    # current
    ("current-not-list", [(("current",), {"model": "rm2"})], "current"),
    ("current-item-not-object", [(("current", 0), "rm2")], "current[0]"),
    ("current-unknown-field", [(("current", 0, "zone"), "a")], "current[0].zone"),
    ("current-model-missing", [(("current", 0, "model"), DELETE)], "current[0].model"),
    ("current-model-unknown", [(("current", 0, "model"), "dien")], "current[0].model"),
    ("current-variant-unknown", [(("current", 0, "variant"), "ncf-small")], "current[0].variant"),
    ("current-type-missing", [(("current", 0, "type"), DELETE)], "current[0].type"),
    ("current-type-not-listed", [(("current", 0, "type"), "p3.2xlarge")], "current[0].type"),
    ("current-count-missing", [(("current", 0, "count"), DELETE)], "current[0].count"),
    ("current-count-negative", [(("current", 0, "count"), -1)], "current[0].count"),
    ("current-count-float", [(("current", 0, "count"), 1.5)], "current[0].count"),
    ("current-count-over-max", [(("current", 0, "count"), MAX_COUNT + 1)], "current[0].count"),
    ("current-twice", [(("current",), [{"model": "rm2", "type": "r5n.large", "count": 2}] * 2)], "current[1]"),
    ("variant-profile-and-profiles", [INLINE, ((*V0, "profile"), "wnd")], "models[1].variants[0]"),
    ("variant-profiles-number-as-text", [INLINE, ((*G0, "mean"), ["5", "20", "100"])], f"{PROFILES}: types.g4dn.xlarge.mean"),
    ("variant-profiles-bool", [INLINE, ((*G0, "batch"), [True, 2, 3])], f"{PROFILES}: types.g4dn.xlarge.batch"),
    # change_cost
    ("change-cost-not-object", [(("change_cost",), 5)], "change_cost"),
    ("change-cost-unknown-field", [(("change_cost", "migrate"), 1)], "change_cost.migrate"),
    ("change-cost-start-negative", [(("change_cost", "start"), -0.01)], "change_cost.start"),
    ("change-cost-start-string", [(("change_cost", "start"), "free")], "change_cost.start"),
    ("change-cost-stop-negative", [(("change_cost", "stop"), -1)], "change_cost.stop"),
    # the scalars
    ("time-limit-zero", [(("time_limit_s",), 0)], "time_limit_s"),
    ("time-limit-negative", [(("time_limit_s",), -1)], "time_limit_s"),
    ("time-limit-over-600", [(("time_limit_s",), 601)], "time_limit_s"),
    ("time-limit-string", [(("time_limit_s",), "10")], "time_limit_s"),
    ("budget-negative", [(("budget_per_hour",), -1)], "budget_per_hour"),
    ("budget-zero", [(("budget_per_hour",), 0)], "budget_per_hour"),
    ("budget-string", [(("budget_per_hour",), "10")], "budget_per_hour"),
    ("max-units-zero", [(("max_units",), 0)], "max_units"),
    ("max-units-negative", [(("max_units",), -4)], "max_units"),
    ("max-utilisation-zero", [(("max_utilisation",), 0)], "max_utilisation"),
    ("max-utilisation-under-min", [(("max_utilisation",), 0.01)], "max_utilisation"),
    ("max-utilisation-over-1", [(("max_utilisation",), 1.5)], "max_utilisation"),
    ("max-utilisation-string", [(("max_utilisation",), "90%")], "max_utilisation"),
    # refine
    ("refine-string", [(("refine",), "yes")], "refine"),
    ("refine-number", [(("refine",), 1)], "refine"),
    ("refine-unknown-field", [(("refine", "rounds"), 3)], "refine.rounds"),
    ("refine-queries-too-few", [(("refine", "queries"), 100)], "refine.queries"),
    ("refine-queries-too-many", [(("refine", "queries"), MAX_REFINE_QUERIES + 1)], "refine.queries"),
    ("refine-queries-float", [(("refine", "queries"), 5000.5)], "refine.queries"),
    ("refine-seed-negative", [(("refine", "seed"), -1)], "refine.seed"),
    ("refine-margin-zero", [(("refine", "margin"), 0)], "refine.margin"),
    ("refine-margin-over-1", [(("refine", "margin"), 1.5)], "refine.margin"),
]


def test_the_cases_have_unique_ids() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(("edits", "field"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_field_is_named(profiles: ProfileSet, edits: list[Edit], field: str) -> None:
    raw = edited(*edits)
    with pytest.raises(PlanRequestError) as exc:
        parse(raw, profiles)
    message = str(exc.value)
    assert isinstance(exc.value, ConfigError)
    # The whole path, then ':' or the quoted value (never just a prefix of a longer path).
    assert message.startswith(field), message
    assert message[len(field)] in ": ", message


@pytest.mark.parametrize("raw", [[], None, "plan", 3], ids=["list", "null", "string", "number"])
def test_a_request_that_is_not_an_object(profiles: ProfileSet, raw: Any) -> None:
    with pytest.raises(PlanRequestError, match="expected a JSON object"):
        parse(raw, profiles)


def test_the_base_request_parses_into_what_it_says(profiles: ProfileSet) -> None:
    req = parse(edited(), profiles)
    assert [t.name for t in req.types] == [t["name"] for t in TYPES]
    g4dn = req.type("g4dn.xlarge")
    assert (g4dn.price_per_hour, g4dn.accelerator, g4dn.available, g4dn.startup_s, g4dn.units) == (
        0.526,
        True,
        5,
        90.0,
        4.0,
    )
    c5n = req.type("c5n.2xlarge")
    assert (c5n.accelerator, c5n.startup_s, c5n.units) == (False, 60.0, 1.0)  # the defaults
    rm2, ncf = req.models
    assert [v.name for v in rm2.variants] == ["rm2"] and rm2.variants[0].accuracy is None
    assert [(v.name, v.accuracy) for v in ncf.variants] == [("ncf", 0.9), ("ncf-small", 0.8)]
    # ncf-small runs on wnd's profiles, on every listed type
    small = ncf.variants[1].profile_model
    assert sorted(req.profiles.types(small)) == sorted(t["name"] for t in TYPES)
    assert (
        req.profiles.get(small, "r5n.large").means.tolist() == profiles.get("wnd", "r5n.large").means.tolist()
    )
    fast, bulk = ncf.classes
    assert (fast.name, fast.target_ms, fast.priority, fast.utility_weight) == ("fast", 200.0, 0, 1.0)
    assert (bulk.attainment, bulk.priority, bulk.utility_weight) == (0.9, -1, 0.5)
    assert rm2.load["default"].at(0.9) == 100.0
    assert ncf.load["fast"].at(0.9) == 10.0
    assert req.objective.kind == "min_cost" and req.objective.load_quantile == 0.9
    assert [(c.model, c.variant, c.type, c.count) for c in req.current] == [("rm2", "rm2", "r5n.large", 2)]
    assert req.max_utilisation == 0.85
    assert req.refine == RefineOptions(queries=2000, seed=3, margin=0.4)
    assert (req.start_cost, req.stop_cost, req.time_limit_s, req.budget_per_hour, req.max_units) == (
        0.01,
        0.0,
        10.0,
        100.0,
        1000.0,
    )


def test_defaults_when_optional_sections_are_left_out(profiles: ProfileSet) -> None:
    raw = edited(
        *[
            ((key,), DELETE)
            for key in (
                "objective",
                "current",
                "change_cost",
                "time_limit_s",
                "budget_per_hour",
                "max_units",
                "max_utilisation",
                "refine",
            )
        ]
    )
    req = parse(raw, profiles)
    assert req.objective.kind == "min_cost" and req.objective.load_quantile == 0.9
    assert req.current == () and req.start_cost is None and req.stop_cost == 0.0
    assert req.time_limit_s == 10.0 and req.budget_per_hour is None and req.max_units is None
    assert req.max_utilisation == DEFAULT_MAX_UTILISATION
    assert req.refine is None


def test_a_load_given_as_quantiles_is_interpolated(profiles: ProfileSet) -> None:
    req = parse(edited((BULK, {"quantiles": {"0.9": 30, "0.5": 20, "0.1": 4}})), profiles)
    load = req.models[1].load["bulk"]
    assert load.levels == (0.1, 0.5, 0.9)  # sorted by level
    assert load.at(0.5) == pytest.approx(20.0)
    assert load.at(0.7) == pytest.approx(25.0)
    assert load.at(0.3) == pytest.approx(12.0)
    assert load.at(0.99) == pytest.approx(30.0)  # held at the ends
    assert load.at(0.01) == pytest.approx(4.0)


def test_the_plan_uses_the_objectives_load_quantile(profiles: ProfileSet) -> None:
    raw = {
        "types": TYPES,
        "models": [
            {
                "name": "rm2",
                "classes": [{"name": "default", "target_ms": 350}],
                "load": {"default": {"quantiles": {"0.5": 50, "0.9": 100}}},
            }
        ],
        "objective": {"kind": "min_cost", "load_quantile": 0.7},
    }
    plan = make_plan(parse(raw, profiles))
    assert plan.outcome("rm2", "default").load_qps == pytest.approx(75.0)
    assert sum(a.rate_qps for a in plan.allocations) == pytest.approx(75.0, rel=1e-6)


def test_a_model_with_one_class_takes_a_bare_number_as_load(profiles: ProfileSet) -> None:
    req = parse(edited(((*M0, "load"), 42)), profiles)
    assert req.models[0].load == {"default": Load((0.5,), (42.0,))}
    assert req.models[0].load["default"].at(0.1) == req.models[0].load["default"].at(0.99) == 42.0


def test_a_class_left_out_of_the_load_has_none(profiles: ProfileSet) -> None:
    req = parse(edited(((*M1, "load"), {"fast": 10})), profiles)
    assert set(req.models[1].load) == {"fast"}


def test_an_inline_profile_variant_parses_and_is_planned(profiles: ProfileSet) -> None:
    raw = {
        "types": TYPES,
        "models": [
            {
                "name": "rm2",
                "variants": [{"name": "rm2-fast", "profiles": INLINE_PROFILES, "accuracy": 0.7}],
                "classes": [{"name": "default", "target_ms": 350}],
                "load": 100,
            }
        ],
    }
    req = parse(raw, profiles)
    variant = req.models[0].variants[0]
    assert (variant.name, variant.accuracy) == ("rm2-fast", 0.7)
    # Profiled only on g4dn.xlarge, under a private key that cannot collide with a shipped model.
    assert req.profiles.types(variant.profile_model) == ["g4dn.xlarge"]
    assert variant.profile_model not in profiles.models()
    assert req.profiles.get(variant.profile_model, "g4dn.xlarge").means.tolist() == [5, 20, 100]
    plan = make_plan(req)
    assert plan.allocations
    assert {(a.variant, a.type) for a in plan.allocations} == {("rm2-fast", "g4dn.xlarge")}
    assert sum(a.count for a in plan.allocations) >= 1
    outcome = plan.outcome("rm2", "default")
    assert outcome.dropped == 0.0 and outcome.within_target >= 0.99
    assert plan.served_accuracy == pytest.approx(0.7)


def test_an_inline_profile_with_its_own_model_name_stays_private(profiles: ProfileSet) -> None:
    raw = {
        "types": TYPES,
        "models": [
            {
                "name": "rm2",
                "variants": [
                    {"name": "rm2"},
                    {"name": "rm2-fast", "profiles": {"model": "rm2", **INLINE_PROFILES}},
                ],
                "classes": [{"name": "default", "target_ms": 350}],
                "load": 100,
            }
        ],
    }
    req = parse(raw, profiles)
    shipped, inline = req.models[0].variants
    assert shipped.profile_model != inline.profile_model
    assert (
        req.profiles.get(shipped.profile_model, "g4dn.xlarge").means.tolist()
        == profiles.get("rm2", "g4dn.xlarge").means.tolist()
    )
    assert req.profiles.get(inline.profile_model, "g4dn.xlarge").means.tolist() == [5, 20, 100]


@pytest.mark.parametrize("levels", [0.5, [[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]], ids=["scalar", "2-d"])
def test_inline_profile_levels_of_the_wrong_shape_are_named(profiles: ProfileSet, levels: Any) -> None:
    raw = edited(((*V0, "profiles"), {**INLINE_PROFILES, "quantile_levels": levels}))
    with pytest.raises(PlanRequestError, match=r"^models\[1\]\.variants\[0\]\.profiles: "):
        parse(raw, profiles)


def test_quantiles_that_do_not_reach_the_planned_level_are_refused(profiles: ProfileSet) -> None:
    """Planned at 0.9 from levels up to 0.5: the rate at 0.5 would be planned for, silently."""
    with pytest.raises(PlanRequestError, match=r"^models\[1\]\.load\.bulk: quantiles 0.1 to 0.5 do not reach "
                                               r"objective.load_quantile 0.9"):
        parse(edited((BULK, {"quantiles": {"0.1": 10, "0.5": 50}})), profiles)


def test_a_quantile_level_given_twice_is_refused(profiles: ProfileSet) -> None:
    with pytest.raises(PlanRequestError, match=r"^models\[1\]\.load\.bulk\.quantiles"):
        parse(edited(((*BULK, "quantiles"), {"0.5": 20, "0.50": 40, "0.9": 50})), profiles)


# --- no plan meets the request -------------------------------------------------------------------


def _one_model(
    model: str,
    target_ms: float,
    load: float,
    available: int | None = None,
    objective: dict[str, Any] | None = None,
) -> dict[str, Any]:
    types = [
        {**t, "available": available}
        if available is not None
        else {k: v for k, v in t.items() if k != "available"}
        for t in TYPES
    ]
    return {
        "types": types,
        "models": [{"name": model, "classes": [{"name": "default", "target_ms": target_ms}], "load": load}],
        "objective": objective or {"kind": "min_cost"},
    }


def test_a_target_below_every_types_service_time_is_infeasible(profiles: ProfileSet) -> None:
    req = parse(_one_model("dien", 1, 10), profiles)
    with pytest.raises(PlanInfeasible, match="no type serves dien's batch") as exc:
        make_plan(req)
    assert "1 ms" in str(exc.value) and "fastest:" in str(exc.value)


def test_caps_on_the_types_make_min_cost_infeasible_and_say_so(profiles: ProfileSet) -> None:
    req = parse(_one_model("rm2", 350, 100, available=1), profiles)
    with pytest.raises(PlanInfeasible) as exc:
        make_plan(req)
    message = str(exc.value)
    assert "limits" in message
    for t in TYPES:
        assert f"{t['name']} x1" in message
    assert "rm2/default" in message  # what the best plan within the limits would drop


def test_caps_under_the_utility_objective_drop_part_of_the_load(profiles: ProfileSet) -> None:
    req = parse(_one_model("rm2", 350, 100, available=1, objective={"kind": "utility"}), profiles)
    plan = make_plan(req)
    outcome = plan.outcome("rm2", "default")
    assert 0.0 < outcome.dropped < 1.0
    assert outcome.within_target <= 1.0 - outcome.dropped + 1e-9
    assert plan.allocations
    for a in plan.allocations:
        assert a.count <= 1
    assert sum(a.rate_qps for a in plan.allocations) == pytest.approx(
        100.0 * (1.0 - outcome.dropped), rel=1e-3
    )


def test_the_utility_objective_without_drops_is_still_infeasible(profiles: ProfileSet) -> None:
    req = parse(
        _one_model("rm2", 350, 100, available=1, objective={"kind": "utility", "allow_drops": False}),
        profiles,
    )
    with pytest.raises(PlanInfeasible, match="limits"):
        make_plan(req)


# --- the current pool ----------------------------------------------------------------------------


def _with_current_on_t3(profiles: ProfileSet, target_ms: float, stop_cost: float) -> PlanRequest:
    raw = _one_model("rm2", target_ms, 100)
    raw["models"][0]["batch_mix"] = "fixed:10"
    raw["current"] = [{"model": "rm2", "type": "t3.xlarge", "count": 3}]
    raw["change_cost"] = {"stop": stop_cost}
    return parse(raw, profiles)


def test_instances_the_plan_stops_are_listed_as_changes(profiles: ProfileSet) -> None:
    # At 30 ms t3.xlarge can serve batch 10, but r5n.large does it for less: the plan stops the three.
    plan = make_plan(_with_current_on_t3(profiles, 30, 0.0))
    assert plan.count("rm2", "t3.xlarge") == 0
    stopped = [(c.model, c.variant, c.before, c.after) for c in plan.changes if c.type == "t3.xlarge"]
    assert stopped == [("rm2", "rm2", 3, 0)]
    started = {c.type: c.after - c.before for c in plan.changes if c.type != "t3.xlarge"}
    assert started == {a.type: a.count for a in plan.allocations}


def test_current_instances_on_a_type_that_cannot_serve_are_stopped(profiles: ProfileSet) -> None:
    plan = make_plan(_with_current_on_t3(profiles, 20, 0.5))
    assert plan.count("rm2", "t3.xlarge") == 0
    stopped = [(c.before, c.after) for c in plan.changes if c.type == "t3.xlarge"]
    assert stopped == [(3, 0)]
    assert plan.change_cost >= 3 * 0.5


def test_the_base_request_is_planned(profiles: ProfileSet) -> None:
    plan = make_plan(parse(edited(), profiles))
    assert {a.model for a in plan.allocations} == {"rm2", "ncf"}
    assert plan.cost_per_hour <= 100  # the budget
    for outcome in plan.classes:
        assert outcome.dropped == 0.0
        assert outcome.within_target >= outcome.attainment - 1e-6
    # bulk is planned for its forecast's 0.9 quantile
    assert plan.outcome("ncf", "bulk").load_qps == pytest.approx(30.0)
    # the two r5n.large instances of rm2 already running count as changes only where the plan differs
    for change in plan.changes:
        assert change.after == plan.count(change.model, change.type, change.variant)


@pytest.mark.parametrize(
    ("edits", "field"),
    [
        ([(("frob" * 100_000,), 1)], "frob"),  # an unknown key of 400 kB
        ([(("objective", "kind"), "\x85" * 1_000_000)], "objective.kind"),
        ([(("models", 1, "batch_mix"), "fixed:" + "9" * 100_000)], "models[1].batch_mix"),
        ([((*BULK, "quantiles"), {"x" * 100_000: 20})], "models[1].load.bulk.quantiles.x"),
        ([(("types", 0, "price_per_hour"), list(range(100_000)))], "types[0].price_per_hour"),
    ],
    ids=["unknown-key", "string", "batch-mix", "quantile-key", "list"],
)
def test_an_error_quotes_a_bounded_part_of_the_clients_value(
    profiles: ProfileSet, edits: list[Edit], field: str
) -> None:
    # An 8 MB request got a 20 MB error back: every value was quoted whole.
    with pytest.raises(PlanRequestError) as exc:
        parse(edited(*edits), profiles)
    message = str(exc.value)
    assert message.startswith(field) and len(message) < 400, message[:500]


@pytest.mark.parametrize("text", ["fixed:\u0661\u0660", "uniform:\u0661-\u0662"])
def test_a_batch_mix_takes_ascii_digits_only(text: str) -> None:
    from gateway.workload import parse_batch_mix

    with pytest.raises(ConfigError, match="batch mix"):
        parse_batch_mix(text)


@pytest.mark.parametrize("load", [1e-7, 1e-6, 1e-4])
def test_a_tiny_load_is_planned_as_a_small_one(profiles: ProfileSet, load: float) -> None:
    # Below the solver's tolerance: 1e-7 q/s got a 200 plan of nothing, 1e-6 a 422, 1e-4 a plan
    # that served 95% of it.
    from allocator.planner.plan import make_plan

    raw = {"types": TYPES, "models": [{"name": "rm2", "classes": [{"name": "default", "target_ms": 350}],
                                       "load": load}], "objective": {"kind": "min_cost"}}
    plan = make_plan(parse(raw, profiles))
    assert sum(a.count for a in plan.allocations) == 1
    assert plan.outcome("rm2", "default").within_target >= 0.99


def test_a_profile_faster_than_a_microsecond_is_refused(profiles: ProfileSet) -> None:
    raw = edited()
    raw["models"][0]["profiles"] = {"quantile_levels": [0, 0.5, 1],
                                    "types": {"r5n.large": {"batch": [1], "mean": [1e-9], "quantiles": [[0, 0, 0]]}}}
    with pytest.raises(PlanRequestError, match=r"types.r5n.large.mean: expected one mean of at least 0.001 ms"):
        parse(raw, profiles)
