"""The control loop on the virtual clock: the baselines' rules, our policy's safety rules, the
simulated actuator (start-up delays, the cap, released capacity held) and reproducibility."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import numpy as np
import pytest

from allocator.autoscale.actuator import GroupKey, GroupState, PartialScale, bounded
from allocator.autoscale.collector import Collected
from allocator.autoscale.forecast import make_forecaster
from allocator.autoscale.planned import PlannedPolicy
from allocator.autoscale.policies import StaticPolicy, Target, aiad, oneshot
from allocator.autoscale.simloop import SimModel, SimSetting, run_loop
from allocator.autoscale.view import ClusterView, ModelView, Window
from benchmarks.autoscale.faro_setting import faro_setting, make_policy, minute_arrivals, plan_template
from benchmarks.planner.faro import TYPE, profiles, service_mean_ms

KEY = GroupKey("a", "a", TYPE)


def view_with(latency_ms: float, replicas: int, ticks: int = 1, arrivals: int = 100, queued: int = 0) -> tuple[ModelView, ClusterView]:
    m = ModelView("a", 720.0, 10.0, groups={KEY: GroupState(replicas)})
    for _ in range(ticks):
        m.record(Window(arrivals, arrivals, latency_ms * arrivals, 0, queued, 0))
    return m, ClusterView(10.0 * ticks, 10.0, {"a": m}, 36, replicas)


def test_oneshot_scales_by_latency_over_target_after_three_ticks_over() -> None:
    pol = oneshot()
    _, view = view_with(1440.0, 3)
    assert pol.decide(view) == {} and pol.decide(view) == {}
    third = pol.decide(view)
    assert third[KEY].replicas == 6  # ceil(3 * 1440 / 720)
    assert pol.decide(view) == {}  # the streak starts again after an action


def test_aiad_steps_down_by_one_only_after_sixty_ticks_under() -> None:
    pol = aiad()
    _, view = view_with(100.0, 5)
    decided = [pol.decide(view) for _ in range(60)]
    assert all(d == {} for d in decided[:59]) and decided[59][KEY].replicas == 4


def test_a_tick_over_target_breaks_a_streak_under() -> None:
    pol = aiad()
    _, low = view_with(100.0, 5)
    _, high = view_with(2000.0, 5)
    for _ in range(59):
        pol.decide(low)
    pol.decide(high)
    assert pol.decide(low) == {}


def planned(objective: str = "utility", **kw: object) -> PlannedPolicy:
    service = {KEY: service_mean_ms() / 1000.0}
    utility = plan_template(["a"], 36)

    def template(loads: dict, current: list) -> dict:
        req = utility(loads, current)
        if objective == "min_cost":
            req["objective"] = {"kind": "min_cost", "load_quantile": 0.9}
            req["max_utilisation"] = 0.9
        return req

    return PlannedPolicy(template, make_forecaster("last"), service, **kw)  # type: ignore[arg-type]


def steady_view(rate_per_tick: int, replicas: int, now_s: float, ticks: int = 30) -> ClusterView:
    m = ModelView("a", 720.0, 10.0, groups={KEY: GroupState(replicas)})
    for _ in range(ticks):
        m.record(Window(rate_per_tick, rate_per_tick, 200.0 * rate_per_tick, 0, 0, 0))
    return ClusterView(now_s, 10.0, {"a": m}, 36, replicas)


def test_planned_grows_at_once_but_by_at_most_max_up() -> None:
    pol = planned(max_up=3)
    out = pol.decide(steady_view(300, 1, 300.0))  # 30 q/s needs about 6 at 154 ms
    assert out[KEY].replicas == 4 and out[KEY].reason.startswith("plan")


def test_planned_shrinks_only_after_wanting_less_for_a_while_one_at_a_time_and_never_below_need() -> None:
    pol = planned("min_cost", down_after_s=60.0, plan_every_s=30.0, max_down=1)
    rate = 100  # per 10 s tick
    need = pol.need(steady_view(rate, 20, 0.0).models["a"], KEY)
    assert need == int(np.ceil(10.0 * service_mean_ms() / 1000.0 / 0.9))
    seen = []
    replicas = 20
    for k in range(12):
        out = pol.decide(steady_view(rate, replicas, 30.0 * k))
        if KEY in out:
            assert out[KEY].replicas == replicas - 1  # one at a time
            replicas = out[KEY].replicas
            seen.append(30.0 * k)
    assert seen and seen[0] == 60.0  # wanted fewer since 0 s: the first step after down_after_s
    assert all(b - a >= 60.0 for a, b in itertools.pairwise(seen))
    assert replicas >= need and pol.need(steady_view(rate, replicas, 0.0).models["a"], KEY) == need


def test_planned_reacts_between_plans_when_the_queue_outgrows_the_pool() -> None:
    pol = planned(plan_every_s=300.0)
    pol.decide(steady_view(50, 4, 0.0))  # the first tick plans
    m = ModelView("a", 720.0, 10.0, groups={KEY: GroupState(4)})
    m.record(Window(50, 40, 200.0 * 40, 0, 30, 4))  # 30 queued on 4 ready
    out = pol.decide(ClusterView(10.0, 10.0, {"a": m}, 36, 4))
    assert out[KEY].replicas == 5 and out[KEY].reason.startswith("react")
    full = ClusterView(10.0, 10.0, {"a": m}, 4, 4)  # no room under the cap: nothing to do
    assert KEY not in pol.decide(full)


def test_planned_reacts_to_late_queries_only_when_the_pool_is_busy() -> None:
    """Late queries on an idle pool (a slow network, a noisy host) get no more instances; on a busy
    one they do."""
    pol = planned(plan_every_s=300.0)
    pol.decide(steady_view(50, 4, 0.0))
    per_instance = 10.0 / (service_mean_ms() / 1000.0)  # queries per 10 s tick one instance serves

    def late_view(arrivals: int) -> ClusterView:
        m = ModelView("a", 720.0, 10.0, groups={KEY: GroupState(4)})
        m.record(Window(arrivals, arrivals, 200.0 * arrivals, arrivals // 10, 0, 1))  # 10% over target
        return ClusterView(10.0, 10.0, {"a": m}, 36, 4)

    idle = late_view(int(0.2 * 4 * per_instance))
    assert pol.utilisation(idle.models["a"]) == pytest.approx(0.2, abs=0.01)
    assert KEY not in pol.decide(idle)
    busy = late_view(int(0.8 * 4 * per_instance))
    assert pol.decide(busy)[KEY].replicas == 5


@pytest.mark.parametrize(("have", "want", "bound", "expected"),
                         [(2, 9, 4, 6), (9, 2, 4, 5), (3, 4, 4, 4), (2, -3, None, 0), (2, 40, None, 40), (1, -5, 4, 0)])
def test_a_change_per_tick_is_bounded_alike_live_and_simulated(have: int, want: int, bound: int | None,
                                                                 expected: int) -> None:
    assert bounded(have, want, bound) == expected


class Scripted(StaticPolicy):
    """Targets for KEY at given times (s): {time: (replicas, reason)}."""

    def __init__(self, start: dict[GroupKey, int], steps: dict[float, tuple[int, str]]) -> None:
        super().__init__(start, "scripted")
        self.steps = steps

    def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
        step = self.steps.get(view.now_s)
        return {KEY: Target(*step)} if step else {}


def small_setting(cap: int | None, seed: int = 0, minutes: int = 6) -> SimSetting:
    counts = np.array([600, 600, 2400, 2400, 600, 600][:minutes])
    model = SimModel("a", minute_arrivals(counts, seed, 0), 720.0, (TYPE,))
    return SimSetting((model,), profiles(["a"]), cap_units=cap, startup_s={TYPE: 35.0}, release_s=30.0,
                      price_per_hour={TYPE: 3.6})


def test_an_instance_serves_only_after_its_start_up_and_the_cap_holds_released_units() -> None:
    script = Scripted({KEY: 2}, {60.0: (6, "up"), 200.0: (2, "down"), 210.0: (8, "up again")})
    run = run_loop(small_setting(cap=8), script, seed=1)
    at = {float(t): int(r[0]) for t, r in zip(run.ticks_s, run.ready, strict=True)}
    assert at[60.0] == 2 and at[90.0] == 2 and at[100.0] == 6  # started at 60 s, serving from 95 s
    assert at[200.0] == 2
    # at 210 s four units are still held for 30 s after their removal: only 2 more can start
    ups = [d for d in run.decisions if d.reason == "up again"]
    assert ups and ups[0].after == 4
    assert run.held.max() <= 8
    # cost: $3.6/h is $0.001 per instance-second; at least 2 instances for the whole run
    assert run.cost >= 2 * 0.001 * 360 * 0.99


def test_the_simulated_loop_bounds_each_change_as_the_live_loop_does() -> None:
    jump = Scripted({KEY: 1}, {60.0: (11, "jump")})
    run = run_loop(dataclasses.replace(small_setting(cap=None), max_change=4), jump, seed=1)
    assert [(d.before, d.after) for d in run.decisions] == [(1, 5)]


def test_the_loop_is_reproducible_for_a_seed_and_moves_with_it() -> None:
    def once(seed: int):  # type: ignore[no-untyped-def]
        return run_loop(faro_setting(36, "faro-queue", seed, minutes=4), make_policy("planned", 36), seed)

    a, b, c = once(3), once(3), once(4)
    assert [(d.at_s, d.key, d.after) for d in a.decisions] == [(d.at_s, d.key, d.after) for d in b.decisions]
    assert np.array_equal(a.over, b.over) and np.array_equal(a.ready, b.ready)
    assert not np.array_equal(a.arrivals, c.arrivals)


def test_capacity_that_arrives_late_costs_violations_and_the_planned_loop_beats_fixed_splits() -> None:
    """On the first 20 minutes of Faro's trace (36 CPUs): FairShare and a start of one replica each
    with Oneshot lose far more requests than the planned loop."""
    over = {p: run_loop(faro_setting(36, "faro-queue", 0, minutes=20), make_policy(p, 36), 0).over_target
            for p in ("fairshare", "planned")}
    assert over["planned"] < 0.5 * over["fairshare"]


@pytest.mark.parametrize("name", ["nope"])
def test_unknown_policy_is_named(name: str) -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy(name, 36)


def test_the_forecasters_history_is_bounded_and_keeps_its_steps() -> None:
    from allocator.autoscale.view import HISTORY_TICKS, TRIM_TICKS

    m = ModelView("a", 720.0, 10.0)
    for k in range(HISTORY_TICKS + TRIM_TICKS + 7):
        m.record(Window(k % 6, 0, 0.0, 0, 0, 0))  # 0..5 in each minute of six ticks
    assert len(m.arrivals) <= HISTORY_TICKS + TRIM_TICKS
    steps = m.per_step(60.0)
    assert np.allclose(steps, 15 / 60.0)  # every whole minute still sums 0+1+...+5


def test_faros_executor_retries_a_refused_start_and_takes_no_new_target_meanwhile() -> None:
    """Under a cap of 6 with 2 running and 4 units held after a removal, a start of 4 more gets 0
    now; Faro's executor starts them once the units are free and ignores the targets in between.
    Without it the start is dropped."""
    steps = {60.0: (6, "up"), 100.0: (2, "down"), 110.0: (6, "up again"), 120.0: (3, "ignored while busy")}

    def run(retry: bool):  # type: ignore[no-untyped-def]
        setting = dataclasses.replace(small_setting(cap=6), retry_refused=retry)
        return run_loop(setting, Scripted({KEY: 2}, steps), seed=1)

    dropped, retried = run(False), run(True)
    # at 110 s the four units of the removal are held until 130 s: no room
    assert [d.after for d in dropped.decisions if d.reason == "up again"] == []
    assert [d.reason for d in retried.decisions].count("ignored while busy") == 0
    ticks = {float(t): int(r[0]) for t, r in zip(retried.ticks_s, retried.ready, strict=True)}
    assert ticks[200.0] == 6  # started at 130 s when the units were free, serving 35 s later
    assert {float(t): int(r[0]) for t, r in zip(dropped.ticks_s, dropped.ready, strict=True)}[200.0] == 2


class Groups:
    """An actuator held in memory: each group's instances start at once and drain at once."""

    def __init__(self, start: dict[GroupKey, GroupState]) -> None:
        self.state = dict(start)
        self.calls: list[tuple[GroupKey, int]] = []

    async def groups(self) -> dict[GroupKey, GroupState]:
        return dict(self.state)

    async def scale(self, key: GroupKey, replicas: int) -> None:
        self.calls.append((key, replicas))
        s = self.state.get(key, GroupState())
        if replicas >= s.committed:
            self.state[key] = GroupState(s.ready, s.starting + replicas - s.committed, s.draining)
        else:  # the ones leaving still hold their units while they drain
            self.state[key] = GroupState(replicas, 0, s.draining + s.committed - replicas)


class NoWindows:
    async def collect(self, models: list[str]) -> Collected | None:
        return Collected({m: Window(0, 0, 0.0, 0, 0, 0) for m in models}, 1.0)


async def test_the_live_loop_starts_no_more_than_the_cap_leaves_and_takes_downs_first() -> None:
    from allocator.autoscale.loop import ControlLoop, LoopSettings

    a, b = GroupKey("a", "a", TYPE), GroupKey("b", "b", TYPE)

    class Wants(StaticPolicy):
        free: list[int | None] = []

        def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
            self.free.append(view.free_units)
            return {a: Target(9, "a up"), b: Target(1, "b down")}

    actuator = Groups({a: GroupState(4), b: GroupState(2, 0, 3)})
    policy = Wants({}, "wants")
    loop = ControlLoop(policy, NoWindows(), actuator, {"a": 720.0, "b": 720.0},  # type: ignore[arg-type]
                       LoopSettings(tick_s=1.0, max_change=8, cap_units=12))
    made = await loop.step()
    assert policy.free == [12 - 9]  # 4 + 5 held, 3 of them draining
    assert actuator.calls == [(b, 1), (a, 7)]  # b's down first; a gets the 3 units free, not 5
    assert [(d.key, d.before, d.after) for d in made] == [(b, 2, 1), (a, 4, 7)]
    assert sum(s.ready + s.starting + s.draining for s in actuator.state.values()) == 12
    actuator.calls.clear()
    assert await loop.step() == [] and actuator.calls == []  # at the cap: a waits for units to free
    actuator.state[b] = GroupState(1)  # b's drained instances are gone
    made = await loop.step()
    assert [(d.key, d.before, d.after) for d in made] == [(a, 7, 9)]


async def test_a_failed_start_leaves_its_room_under_the_cap_to_the_next_group() -> None:
    from allocator.autoscale.loop import ControlLoop, LoopSettings

    a, b = GroupKey("a", "a", TYPE), GroupKey("b", "b", TYPE)

    class BrokenA(Groups):
        async def scale(self, key: GroupKey, replicas: int) -> None:
            if key == a:
                raise OSError("servers' admin API refused")
            await super().scale(key, replicas)

    class Wants(StaticPolicy):
        def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
            return {a: Target(4, "a up"), b: Target(4, "b up")}

    actuator = BrokenA({a: GroupState(1), b: GroupState(1)})
    loop = ControlLoop(Wants({}, "wants"), NoWindows(), actuator, {"a": 720.0, "b": 720.0},  # type: ignore[arg-type]
                       LoopSettings(tick_s=1.0, max_change=8, cap_units=5))
    made = await loop.step()
    # a's start failed, so the 3 free units all go to b (not 3 - 3 = 0)
    assert [(d.key, d.before, d.after) for d in made] == [(b, 1, 4)]


class Windows:
    """A collector that hands out the given windows, each covering ``seconds``."""

    def __init__(self, arrivals: list[int], seconds: float = 1.0) -> None:
        self.arrivals, self.seconds, self.calls = list(arrivals), seconds, 0

    async def collect(self, models: list[str]) -> Collected | None:
        self.calls += 1
        n = self.arrivals.pop(0)
        return Collected({m: Window(n, n, 10.0 * n, 0, 0, 0) for m in models}, self.seconds)


class Keep(StaticPolicy):
    def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
        return {}


async def test_a_window_over_several_ticks_is_recorded_as_that_many() -> None:
    """After a skipped tick the next window covers two or more: the rate stays the rate."""
    from allocator.autoscale.loop import ControlLoop, LoopSettings

    loop = ControlLoop(Keep({}, "keep"), Windows([301], seconds=3.02), Groups({KEY: GroupState(1)}),  # type: ignore[arg-type]
                       {"a": 720.0}, LoopSettings(tick_s=1.0))
    await loop.step()
    view = loop.views["a"]
    assert view.arrivals == [101, 100, 100] and view.rate(3.0) == pytest.approx(301 / 3)
    assert sum(w.latency_sum_ms for w in view.windows) == pytest.approx(3010.0)


async def test_a_failed_read_of_the_pool_loses_no_window_and_decides_nothing() -> None:
    from allocator.autoscale.loop import ControlLoop, LoopSettings

    class Down(Groups):
        fail = True

        async def groups(self) -> dict[GroupKey, GroupState]:
            if self.fail:
                raise OSError("servers' admin API down")
            return await super().groups()

    class Wants(StaticPolicy):
        def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
            return {KEY: Target(3, "up")}

    actuator, collector = Down({KEY: GroupState(1)}), Windows([50, 60])
    loop = ControlLoop(Wants({}), collector, actuator, {"a": 720.0}, LoopSettings(tick_s=1.0))  # type: ignore[arg-type]
    assert await loop.step() == [] and loop.ticks_failed == 1 and actuator.calls == []  # never blind
    assert loop.views["a"].arrivals == [50]  # the window was read: kept
    actuator.fail = False
    await loop.step()
    assert loop.views["a"].arrivals == [50, 60] and actuator.calls == [(KEY, 3)]


async def test_a_failing_policy_skips_the_tick_and_the_loop_goes_on() -> None:
    from allocator.autoscale.loop import ControlLoop, LoopSettings

    class Fails(StaticPolicy):
        calls = 0

        def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
            self.calls += 1
            if self.calls == 1:
                raise ValueError("rate above the planner's bound")
            return {KEY: Target(2, "up")}

    actuator = Groups({KEY: GroupState(1)})
    loop = ControlLoop(Fails({}, "fails"), NoWindows(), actuator, {"a": 720.0}, LoopSettings(tick_s=1.0))  # type: ignore[arg-type]
    assert await loop.step() == [] and actuator.calls == []
    assert loop.metrics.errors.labels("decide")._value.get() == 1
    assert [(d.before, d.after) for d in await loop.step()] == [(1, 2)]


async def test_a_start_that_fails_part_way_holds_the_units_it_started() -> None:
    """a asks for 2 more, one starts, then the servers refuse: that one holds a unit of the cap,
    so b gets 2, not 3, and the cluster stays within its 5."""
    from allocator.autoscale.loop import ControlLoop, LoopSettings

    a, b = GroupKey("a", "a", TYPE), GroupKey("b", "b", TYPE)

    class HalfA(Groups):
        async def scale(self, key: GroupKey, replicas: int) -> None:
            if key == a:
                await super().scale(key, self.state[key].committed + 1)
                raise PartialScale("servers' admin API refused the second", 1)
            await super().scale(key, replicas)

    class Wants(StaticPolicy):
        def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
            return {a: Target(3, "a up"), b: Target(4, "b up")}

    actuator = HalfA({a: GroupState(1), b: GroupState(1)})
    loop = ControlLoop(Wants({}, "wants"), NoWindows(), actuator, {"a": 720.0, "b": 720.0},  # type: ignore[arg-type]
                       LoopSettings(tick_s=1.0, max_change=8, cap_units=5))
    made = await loop.step()
    assert [(d.key, d.before, d.after) for d in made] == [(a, 1, 2), (b, 1, 3)]
    assert "1 of the starts failed" in made[0].reason
    assert sum(s.committed for s in actuator.state.values()) == 5


async def test_a_tick_that_overran_skips_the_ticks_it_missed() -> None:
    """The first step takes 3.5 ticks: the next runs on the tick grid after it, not three times
    back to back on windows of nothing."""
    import asyncio
    import time

    from allocator.autoscale.loop import ControlLoop, LoopSettings

    loop = ControlLoop(Keep({}, "keep"), NoWindows(), Groups({}), {"a": 720.0}, LoopSettings(tick_s=0.2))  # type: ignore[arg-type]
    at: list[float] = []
    stop = asyncio.Event()

    async def step() -> list[object]:
        at.append(time.monotonic())
        if len(at) == 1:
            await asyncio.sleep(0.7)
        if len(at) == 4:
            stop.set()
        return []

    loop.step = step  # type: ignore[method-assign]
    await asyncio.wait_for(loop.run(stop), 10)
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert gaps[0] >= 0.7 and min(gaps[1:]) > 0.05, gaps


async def test_a_decision_that_overruns_skips_ticks_and_only_one_runs_at_a_time() -> None:
    """A plan stuck for a while: the tick goes on without it (windows still recorded), the next
    ticks do not start a second decision beside it, and once it ends the loop decides again."""
    import threading

    from allocator.autoscale.loop import ControlLoop, LoopSettings

    release = threading.Event()

    class Stuck(StaticPolicy):
        calls = 0

        def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
            self.calls += 1
            if self.calls == 1:
                release.wait(10)
            return {KEY: Target(2, "up")}

    policy = Stuck({}, "stuck")
    actuator = Groups({KEY: GroupState(1)})
    loop = ControlLoop(policy, Windows([10, 20, 30]), actuator, {"a": 720.0},  # type: ignore[arg-type]
                       LoopSettings(tick_s=1.0, decide_s=0.2))
    assert await loop.step() == [] and await loop.step() == []
    assert policy.calls == 1 and actuator.calls == [] and loop.views["a"].arrivals == [10, 20]
    assert loop.metrics.errors.labels("decide")._value.get() == 2
    release.set()
    await asyncio.sleep(0.1)  # the stuck one ends; its targets are stale, dropped
    assert [(d.before, d.after) for d in await loop.step()] == [(1, 2)] and policy.calls == 2


GPU_KEY, CPU_KEY = GroupKey("rm2", "rm2", "g4dn.xlarge"), GroupKey("rm2", "rm2", "r5n.large")


def hetero_view(now_s: float, rate_per_tick: int, groups: dict[GroupKey, GroupState],
                late: bool = False, queued: int = 0) -> ClusterView:
    m = ModelView("rm2", 350.0, 10.0, groups=groups)
    for _ in range(6):
        m.record(Window(rate_per_tick, rate_per_tick, 100.0 * rate_per_tick,
                        rate_per_tick // 5 if late else 0, queued, sum(s.ready for s in groups.values())))
    return ClusterView(now_s, 10.0, {"rm2": m}, None, sum(s.ready + s.starting for s in groups.values()))


def hetero_policy(**kw: object) -> PlannedPolicy:
    from allocator.autoscale.loop import service_times, template_from_config
    from gateway.config import parse_config

    cfg = parse_config({"models": [{"name": "rm2", "qos_ms": 350,
                                    "pool": [{"type": "g4dn.xlarge", "count": 1}, {"type": "r5n.large", "count": 1}]}]})
    return PlannedPolicy(template_from_config(cfg, {"kind": "min_cost", "load_quantile": 0.5}),
                         make_forecaster("last"), service_times(cfg), profiles=cfg.profile_set(),
                         **kw)  # type: ignore[arg-type]


def test_a_type_the_cluster_has_no_room_for_is_planned_around_and_tried_again_later() -> None:
    """GPUs that cannot be placed (no node fits them, a quota) are dropped at once, the plan puts
    the load on the other type, and the GPU type is tried again after the hold."""
    free = hetero_policy(plan_every_s=30.0, unschedulable_hold_s=600.0)
    wanted = free.decide(hetero_view(60.0, 1000, {GPU_KEY: GroupState(1), CPU_KEY: GroupState(1)}))
    assert wanted[GPU_KEY].replicas == 2  # 100 q/s: the cheapest plan wants another GPU

    pol = hetero_policy(plan_every_s=30.0, unschedulable_hold_s=600.0)
    stuck = {GPU_KEY: GroupState(ready=1, starting=1, unschedulable=1), CPU_KEY: GroupState(ready=1)}
    out = pol.decide(hetero_view(60.0, 1000, stuck))
    assert out[GPU_KEY].replicas == 1 and "cannot be placed" in out[GPU_KEY].reason
    assert pol.caps(60.0) == {"g4dn.xlarge": 1}
    assert pol.last_plan is not None and pol.last_plan.count("rm2", "g4dn.xlarge", None) == 1
    # The GPU's share of the load goes to a type with room: more CPU instances than without the cap.
    others = {k: t.replicas for k, t in out.items() if k.type != "g4dn.xlarge"}
    assert sum(others.values()) > sum(t.replicas for k, t in wanted.items() if k.type != "g4dn.xlarge")
    # Late queries meanwhile grow another group, never the (faster) GPU one.
    placed = {GPU_KEY: GroupState(ready=1), **{k: GroupState(ready=n) for k, n in others.items()}}
    react = pol.decide(hetero_view(70.0, 1000, placed, late=True))
    assert react and GPU_KEY not in react
    # After the hold, GPUs are planned again.
    assert pol.caps(661.0) == {}
    later = pol.decide(hetero_view(661.0, 1000, {GPU_KEY: GroupState(1), CPU_KEY: GroupState(1)}))
    assert later[GPU_KEY].replicas == 2


def test_the_planned_policy_knows_the_service_time_of_every_variant() -> None:
    """A model whose groups include a variant: the reaction and the floor must not fail on it."""
    from allocator.autoscale.loop import service_times, template_from_config
    from gateway.config import parse_config

    cfg = parse_config({"models": [{"name": "rm2", "qos_ms": 350,
                                    "variants": [{"name": "rm2", "accuracy": 0.8}, {"name": "wnd", "accuracy": 0.7}],
                                    "pool": [{"type": "r5n.large", "count": 1},
                                             {"type": "r5n.large", "count": 1, "variant": "wnd"}]}]})
    service = service_times(cfg)
    wnd = GroupKey("rm2", "wnd", "r5n.large")
    assert {GroupKey("rm2", "rm2", "r5n.large"), wnd} <= set(service)
    assert service[wnd] < service[GroupKey("rm2", "rm2", "r5n.large")]  # the smaller network is faster
    pol = PlannedPolicy(template_from_config(cfg, {"kind": "min_cost", "load_quantile": 0.5}),
                        make_forecaster("last"), service, profiles=cfg.profile_set(), plan_every_s=1e9)
    groups = {GroupKey("rm2", "rm2", "r5n.large"): GroupState(1), wnd: GroupState(1)}
    pol.decide(hetero_view(0.0, 10, groups))  # the first plan
    react = pol.decide(hetero_view(10.0, 1000, groups, late=True))  # 93% busy
    assert react[wnd].reason.startswith("react")  # the fastest group absorbs the surprise
    assert pol.need(ModelView("rm2", 350.0, 10.0, groups={wnd: GroupState(1)}), wnd) == 0  # no rate yet


def test_the_forecast_reaches_the_horizon_from_now_and_each_model_has_its_own_forecaster() -> None:
    """The forecast's first step is the one in progress: 120 s ahead from 10 s into a 60 s step
    takes 3 steps (it took 2, reaching 110 s). A forecaster keeping state per series is copied
    per model (gbm's cache found a model by its series' tail alone)."""
    asked: list[int] = []

    class Recording:
        name = "recording"

        def forecast(self, history: np.ndarray, horizon: int, levels: object = None) -> np.ndarray:
            asked.append(horizon)
            return np.full((horizon, 7), float(history[-1]))

    pol = PlannedPolicy(plan_template(["a"], 36), Recording(), {KEY: 0.1}, step_s=60.0, horizon_s=120.0)
    for ticks, steps in ((12, 2), (13, 3), (17, 3), (18, 2)):
        m = ModelView("a", 720.0, 10.0, groups={KEY: GroupState(1)})
        for _ in range(ticks):
            m.record(Window(100, 100, 0.0, 0, 0, 0))
        pol.load_of(m)
        assert asked[-1] == steps, (ticks, asked)
    assert pol.forecaster_of("a") is pol.forecaster_of("a")
    assert pol.forecaster_of("a") is not pol.forecaster_of("b") and pol.forecaster_of("b") is not pol.forecaster


def queued_view(now_s: float, gpu: int, cpu: int, queued: int = 0) -> ClusterView:
    return hetero_view(now_s, 200, {GPU_KEY: GroupState(gpu), CPU_KEY: GroupState(cpu)}, queued=queued)


def test_a_reaction_soon_after_a_plan_took_the_group_down_holds_the_next_down_longer() -> None:
    """Steady load, a plan that wants one GPU, measurements that need two: the plan took the GPU
    down every ``down_after_s`` and the reaction started it again (a GPU started and stopped every
    2.5-3 minutes with the defaults). A reaction within ``down_after_s`` of a down doubles the wait."""
    pol = hetero_policy(plan_every_s=10.0, down_after_s=30.0)
    gpu, cpu, downs = 2, 3, []
    for t in range(0, 200, 10):
        out = pol.decide(queued_view(float(t), gpu, cpu, queued=10 if t == 40 else 0))
        if GPU_KEY in out:
            if out[GPU_KEY].replicas < gpu:
                downs.append(t)
            gpu = out[GPU_KEY].replicas
        cpu = out[CPU_KEY].replicas if CPU_KEY in out else cpu
    assert downs == [30, 110]  # 30 s of wanting less, then 60 s after the reaction at 40 (was 30, 80, ...)
    assert pol.down_hold == {GPU_KEY: 2.0}


def test_no_reaction_while_a_plan_grows_another_group_of_the_model() -> None:
    pol = hetero_policy(plan_every_s=10.0)
    out = pol.decide(queued_view(0.0, 1, 1, queued=10))  # a queue, and a plan that grows the CPUs
    assert out[CPU_KEY].reason.startswith("plan") and out[CPU_KEY].replicas > 1
    assert GPU_KEY not in out  # the reaction also added a GPU in the same tick
