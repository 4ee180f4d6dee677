"""The tick's Schedule: which fleets a tick takes, without a pass over every fleet at every tick."""

from __future__ import annotations

import math

import pytest

from gpufleet.model import FleetState
from gpufleet.schedule import Schedule


def scheduled(*entries: tuple[str, float]) -> Schedule:
    s = Schedule()
    for name, at in entries:
        s.put(("ns", name), FleetState(uid=name, next_probe=at))
    return s


@pytest.mark.parametrize(
    "entries, moves, now, limit, due, then",
    [
        # each due fleet once, in the order it fell due; the not yet due and the never due stay
        ([("b", 99.5), ("a", 98.0), ("c", 101.0), ("idle", math.inf)], [], 100.0, 10, ["a", "b"], []),
        # a fleet rescheduled: its first entry is stale, the second counts
        ([("b", 99.5), ("a", 98.0)], [("b", 97.0)], 100.0, 10, ["b", "a"], []),
        ([("b", 99.5), ("a", 98.0)], [("b", 150.0)], 100.0, 10, ["a"], []),
        # at most the limit; the rest stay due
        ([(f"q{i}", 90.0 + i) for i in range(7)], [], 100.0, 5, [f"q{i}" for i in range(5)], ["q5", "q6"]),
        ([], [], 100.0, 10, [], []),
    ],
)  # fmt: skip
def test_pop_due(entries, moves, now, limit, due, then):
    s = scheduled(*entries)
    for name, at in moves:
        s.put(("ns", name), s[("ns", name)].rescheduled(at))
    assert s.pop_due(now, limit) == [("ns", name) for name in due]
    assert s.pop_due(now, limit) == [("ns", name) for name in then]


@pytest.mark.parametrize(
    "entries, dropped, started, now, wait",
    [
        ([("a", 101.0)], [], 100.0, 100.2, pytest.approx(0.8)),  # until the next fleet falls due
        ([("a", 100.01)], [], 100.0, 100.0, 0.05),  # never a busy loop
        ([("a", 99.0)], [], 100.0, 100.5, 0.0),  # left due by the tick's limit: at once
        ([("idle", math.inf)], [], 100.0, 100.0, 1.0),  # nothing will fall due: look again in a second
        ([("gone", 99.0), ("later", 150.0)], ["gone"], 100.0, 100.0, 50.0),  # a dropped fleet's entry is skipped
    ],
)  # fmt: skip
def test_wait(entries, dropped, started, now, wait):
    s = scheduled(*entries)
    for name in dropped:
        s.drop(("ns", name))
    assert s.wait(started, now) == wait


def test_a_dropped_fleet_is_never_due_and_clear_forgets_all():
    s = scheduled(("gone", 99.0), ("kept", 99.0))
    assert s.drop(("ns", "gone")).uid == "gone" and s.drop(("ns", "gone")) is None
    assert s.pop_due(100.0, 10) == [("ns", "kept")]
    s.clear()
    assert len(s) == 0 and s.next_due() is None and ("ns", "kept") not in s
