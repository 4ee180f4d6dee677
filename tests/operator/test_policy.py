"""The scaling policy: tables for each rule, and properties that must hold for every input."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.model import Depth, Observation
from gpufleet.policy import History, decide, seeded
from gpufleet.spec import ScalingSpec

BASE = ScalingSpec(
    min_replicas=0,
    max_replicas=10,
    target_tasks_per_replica=2,
    activation_threshold=3,
    scale_up_stabilization_seconds=0,
    scale_down_stabilization_seconds=60,
    max_step_up=4,
    max_step_down=10,
    idle_seconds_before_zero=300,
)


def spec(**changes) -> ScalingSpec:
    return dataclasses.replace(BASE, **changes)


def hist(*recs: tuple[float, int], last_busy: float | None = 0.0) -> History:
    return History(tuple(recs), last_busy)


# (case, spec, observation, history, expected replicas, expected limited_by, words the reason must contain)
TABLE = [
    (
        "idle fleet stays at zero",
        spec(),
        Observation(100, Depth(0, 0), 0),
        hist(),
        0,
        None,
        ["hold 0", "nothing queued"],
    ),
    (
        "below activation stays at zero",
        spec(),
        Observation(100, Depth(2, 0), 0),
        hist(),
        0,
        None,
        ["activation threshold of 3"],
    ),
    (
        "activation wakes from zero",
        spec(),
        Observation(100, Depth(3, 0), 0),
        hist(),
        2,
        None,
        ["scale up 0 -> 2", "3 queued"],
    ),
    (
        "target per replica rounds up",
        spec(),
        Observation(100, Depth(5, 2), 1),
        hist(),
        4,
        None,
        ["scale up 1 -> 4"],
    ),
    (
        "running tasks count",
        spec(),
        Observation(100, Depth(0, 6), 3),
        hist(),
        3,
        None,
        ["hold 3", "6 running"],
    ),
    (
        "scale up bounded by max step",
        spec(),
        Observation(100, Depth(20, 0), 1),
        hist(),
        5,
        "maxStepUp",
        ["held by at most 4"],
    ),
    (
        "max replicas caps",
        spec(max_step_up=100),
        Observation(100, Depth(100, 0), 2),
        hist(),
        10,
        "maxReplicas",
        ["maxReplicas 10"],
    ),
    (
        "min replicas floors",
        spec(min_replicas=2),
        Observation(100, Depth(0, 0), 0),
        hist(),
        2,
        None,
        ["scale up 0 -> 2"],
    ),
    (
        "down held by the window",
        spec(),
        Observation(100, Depth(0, 2), 5),
        hist((30, 5), (90, 4)),
        4,
        None,
        ["scale down 5 -> 4", "highest recommendation of the last 60s"],
    ),
    (
        "down to the window's highest once older ones expire",
        spec(),
        Observation(200, Depth(0, 2), 5),
        hist((100, 5), (150, 2)),
        2,
        None,
        ["scale down 5 -> 2"],
    ),
    (
        "down bounded by max step",
        spec(max_step_down=2),
        Observation(200, Depth(0, 2), 8),
        hist(),
        6,
        None,
        ["scale down 8 -> 6", "at most 2 removed"],
    ),
    (
        "idle keeps one until the idle time",
        spec(scale_down_stabilization_seconds=0),
        Observation(200, Depth(0, 0), 3),
        hist(last_busy=0),
        1,
        None,
        ["scale down 3 -> 1", "zero after 300s idle"],
    ),
    (
        "zero after the idle time",
        spec(scale_down_stabilization_seconds=0),
        Observation(400, Depth(0, 0), 1),
        hist(last_busy=50),
        0,
        None,
        ["scale down 1 -> 0", "for 300s"],
    ),
    (
        "running work is not idle",
        spec(scale_down_stabilization_seconds=0),
        Observation(400, Depth(0, 1), 1),
        hist(last_busy=0),
        1,
        None,
        ["hold 1"],
    ),
    (
        "unknown depth holds",
        spec(),
        Observation(100, None, 7),
        hist(),
        7,
        None,
        ["broker unreachable", "holding 7"],
    ),
    ("paused holds", spec(paused=True), Observation(100, Depth(50, 0), 2), hist(), 2, None, ["paused"]),
    (
        "up stabilization takes the window's lowest",
        spec(scale_up_stabilization_seconds=30),
        Observation(100, Depth(10, 0), 1),
        hist((80, 2)),
        2,
        "scaleUpStabilization",
        ["lowest recommendation of the last 30s"],
    ),
    (
        "a lower recommendation in the up window never scales down",
        spec(scale_up_stabilization_seconds=30),
        Observation(100, Depth(4, 0), 1),
        hist((90, 0)),
        1,
        "scaleUpStabilization",
        ["hold 1"],
    ),
    (
        "scale-in removes only idle workers",
        spec(scale_down_stabilization_seconds=0),
        Observation(100, Depth(0, 2), 6, idle_workers=1),
        hist(),
        5,
        "busyWorkers",
        ["only idle workers", "1 idle worker"],
    ),
    (
        "no idle worker: no scale-in",
        spec(scale_down_stabilization_seconds=0),
        Observation(100, Depth(0, 2), 6, idle_workers=0),
        hist(),
        6,
        "busyWorkers",
        ["hold 6"],
    ),
    (
        "GPU capacity caps scale-up",
        spec(max_step_up=100),
        Observation(100, Depth(10, 0), 2, schedulable=3),
        hist(),
        3,
        "gpuCapacity",
        ["3 pods schedulable"],
    ),
    (
        "capacity never forces a scale-down",
        spec(max_step_up=100),
        Observation(100, Depth(10, 0), 4, schedulable=3),
        hist(),
        4,
        "gpuCapacity",
        ["hold 4"],
    ),
    (
        "budget caps scale-up",
        spec(max_step_up=100),
        Observation(100, Depth(10, 0), 1, budget=3),
        hist(),
        3,
        "gpuBudget",
        ["GPU budget: 3 pods"],
    ),
    (
        "budget shrink removes idle workers only",
        spec(max_step_up=100),
        Observation(100, Depth(10, 0), 5, budget=2, idle_workers=1),
        hist(),
        4,
        "gpuBudget",
        ["scale down 5 -> 4"],
    ),
]


@pytest.mark.parametrize(
    ("case", "s", "obs", "history", "expected", "limited", "words"), TABLE, ids=[t[0] for t in TABLE]
)
def test_policy_table(case, s, obs, history, expected, limited, words):
    d = decide(s, obs, history)
    assert d.replicas == expected, d.reason
    assert d.limited_by == limited, d.reason
    for word in words:
        assert word in d.reason, d.reason


def test_history_keeps_only_the_longest_window():
    s = spec(scale_up_stabilization_seconds=10, scale_down_stabilization_seconds=60)
    d = decide(s, Observation(1000, Depth(1, 0), 1), hist((100, 3), (950, 2)))
    assert d.history.recommendations == ((950, 2), (1000, 1))


def test_restart_seed_waits_a_whole_window_before_scaling_down():
    s = spec()
    history = seeded(1000, 6)
    d = decide(s, Observation(1001, Depth(0, 2), 6), history)
    assert d.replicas == 6
    d = decide(s, Observation(1061, Depth(0, 2), 6), d.history)
    assert d.replicas == 1


def test_reason_is_stable_while_nothing_changes():
    # The reason goes into the status; a status that changes every tick would mean an API write every tick.
    s = spec()
    history = hist((0, 2))
    reasons = set()
    for now in (10, 11, 12, 13):
        d = decide(s, Observation(now, Depth(0, 0), 2), history)
        history = d.history
        reasons.add(d.reason)
    assert len(reasons) == 1


scaling_specs = st.builds(
    lambda lo, span, target, act, up, down, su, sd, idle: ScalingSpec(
        min_replicas=lo,
        max_replicas=lo + span,
        target_tasks_per_replica=target,
        activation_threshold=act,
        scale_up_stabilization_seconds=up,
        scale_down_stabilization_seconds=down,
        max_step_up=su,
        max_step_down=sd,
        idle_seconds_before_zero=idle,
    ),
    st.integers(0, 5),
    st.integers(1, 20),
    st.integers(1, 10),
    st.integers(1, 10),
    st.integers(0, 120),
    st.integers(0, 300),
    st.integers(1, 10),
    st.integers(1, 10),
    st.integers(0, 600),
)
depths = st.one_of(st.none(), st.builds(Depth, st.integers(0, 500), st.integers(0, 50)))
optional_limit = st.one_of(st.none(), st.integers(0, 30))


@st.composite
def runs(draw):
    """A spec, and a sequence of (time step, depth, limits) observations."""
    s = draw(scaling_specs)
    steps = draw(
        st.lists(
            st.tuples(st.integers(0, 90), depths, optional_limit, optional_limit, optional_limit),
            min_size=1,
            max_size=25,
        )
    )
    start = draw(st.integers(s.min_replicas, s.max_replicas))
    return s, start, steps


@settings(max_examples=300, deadline=None)
@given(runs())
def test_properties_over_runs(run):
    s, current, steps = run
    now = 0.0
    history = History()
    downs: list[float] = []
    for dt, depth, idle, schedulable, budget in steps:
        now += dt
        obs = Observation(now, depth, current, idle_workers=idle, schedulable=schedulable, budget=budget)
        d = decide(s, obs, history)
        # never outside [min, max]
        assert s.min_replicas <= d.replicas <= s.max_replicas, d.reason
        # unknown depth never scales (and so never scales down); paused holds
        if depth is None:
            assert d.replicas == current, d.reason
        # never more removed than idle workers, unless min/max force it
        if idle is not None and budget is None and d.replicas < current:
            assert current - d.replicas <= idle or current > s.max_replicas, d.reason
        # never up past what can be scheduled
        if schedulable is not None and d.replicas > current:
            assert d.replicas <= max(schedulable, s.min_replicas), d.reason
        # never down inside the window: a scale-down lands no lower than any recommendation in the window
        if d.replicas < current and current <= s.max_replicas:
            in_window = [
                r for t, r in d.history.recommendations if t >= now - s.scale_down_stabilization_seconds
            ]
            assert d.replicas >= min(max(in_window), current) or (idle is not None or budget is not None), (
                d.reason
            )
            downs.append(now)
        history, current = d.history, d.replicas


@settings(max_examples=200, deadline=None)
@given(scaling_specs, st.integers(0, 30), st.integers(0, 10_000))
def test_unknown_depth_never_moves(s, current, now):
    d = decide(s, Observation(float(now), None, current), History())
    assert d.replicas == current


@settings(max_examples=200, deadline=None)
@given(scaling_specs, st.integers(0, 500), st.integers(0, 50))
def test_no_scale_down_while_work_grows(s, queued, reserved):
    current = s.max_replicas
    d = decide(s, Observation(10.0, Depth(queued, reserved), current), seeded(9.0, current))
    assert d.replicas == current or d.replicas >= min(
        current, -(-(queued + reserved) // s.target_tasks_per_replica)
    )
