"""Dividing a fleet-wide GPU budget: minimums first, then weighted fair shares, the remainder to priority."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.budget import Claim, divide


def pods(shares):
    return {k: s.pods for k, s in shares.items()}


TABLE = [
    ("fits: everyone gets the demand", 10, [Claim("a", 1, 0, 3), Claim("b", 1, 0, 4)], {"a": 3, "b": 4}),
    ("equal weights split evenly", 6, [Claim("a", 1, 0, 10), Claim("b", 1, 0, 10)], {"a": 3, "b": 3}),
    (
        "odd GPU goes to the higher priority",
        7,
        [Claim("a", 1, 0, 10, priority=1), Claim("b", 1, 0, 10, priority=5)],
        {"a": 3, "b": 4},
    ),
    ("weights 1:3", 8, [Claim("a", 1, 0, 10, weight=1), Claim("b", 1, 0, 10, weight=3)], {"a": 2, "b": 6}),
    ("unneeded share flows to the other", 10, [Claim("a", 1, 0, 2), Claim("b", 1, 0, 20)], {"a": 2, "b": 8}),
    ("minimum honoured first", 4, [Claim("a", 1, 3, 10), Claim("b", 1, 0, 10)], {"a": 3, "b": 1}),
    (
        "minimums beyond the budget still honoured",
        2,
        [Claim("a", 1, 2, 5), Claim("b", 1, 2, 5)],
        {"a": 2, "b": 2},
    ),
    ("multi-GPU pods counted in GPUs", 8, [Claim("a", 4, 0, 4), Claim("b", 1, 0, 8)], {"a": 1, "b": 4}),
    ("a pod that does not fit is skipped", 5, [Claim("a", 4, 0, 4), Claim("b", 1, 0, 1)], {"a": 1, "b": 1}),
    ("CPU-only fleets take no budget", 2, [Claim("cpu", 0, 0, 50), Claim("g", 1, 0, 5)], {"g": 2}),
]


@pytest.mark.parametrize(("case", "budget", "claims", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_division_table(case, budget, claims, expected):
    assert pods(divide(budget, claims)) == expected


def test_reasons_say_why():
    shares = divide(6, [Claim("a", 1, 0, 10, priority=2), Claim("b", 1, 0, 10)])
    assert "fair share by weight 1 and priority 2 of 6 GPUs (demand 20)" == shares["a"].reason
    assert "fits the budget" in divide(50, [Claim("a", 1, 0, 10)])["a"].reason


claims = st.lists(
    st.builds(
        lambda i, g, lo, extra, p, w: Claim(f"q{i}", g, lo, lo + extra, p, w),
        st.integers(0, 1000),
        st.integers(1, 4),
        st.integers(0, 3),
        st.integers(0, 10),
        st.integers(0, 3),
        st.integers(1, 4),
    ),
    max_size=6,
    unique_by=lambda c: c.key,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), claims)
def test_properties(budget, cs):
    shares = divide(budget, cs)
    mins = sum(c.min_pods * c.gpus_per_pod for c in cs)
    used = sum(s.gpus for s in shares.values())
    for c in cs:
        got = shares[c.key].pods
        assert c.min_pods <= got <= c.demand_pods  # never below the minimum, never above the demand
    assert used <= max(budget, mins)  # never over budget, except for guaranteed minimums
    # no GPU left idle while some queue wants a pod that would fit
    left = budget - used
    assert not any(shares[c.key].pods < c.demand_pods and c.gpus_per_pod <= left for c in cs)
