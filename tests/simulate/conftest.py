"""Fixtures of the simulator's tests."""

from __future__ import annotations

import pytest

from gpufleet import policy as real_policy
from gpufleet_tools.simulate import policies


@pytest.fixture
def decisions(monkeypatch):
    """Every (observation, decision) of the runs in a test, through the real decide()."""
    seen = []

    def spy(spec, obs, history):
        decision = real_policy.decide(spec, obs, history)
        seen.append((obs, decision))
        return decision

    monkeypatch.setattr(policies, "decide", spy)
    return seen
