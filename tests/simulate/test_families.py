"""Trace families: fixed by their seed, sized to the fleet, within the documented ranges."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpufleet_tools.simulate.families import FAMILIES, LONGEST_S, MAX_TASKS, SHORTEST_S, family, family_setup


@pytest.mark.parametrize("name", FAMILIES)
def test_a_family_s_trace_is_fixed_by_its_seed_and_size(name):
    first, again = family(name, 3, 40), family(name, 3, 40)
    assert first == again
    assert first.tasks != family(name, 4, 40).tasks
    assert first.tasks != family(name, 3, 80).tasks
    arrivals = [t.arrival_s for t in first.tasks]
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0
    assert first.about and first.name == f"{name}-3"


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", [10, 80])
def test_service_times_and_sizes_stay_in_range(name, size):
    for seed in range(6):
        tasks = family(name, seed, size).tasks
        assert tasks
        assert all(SHORTEST_S <= t.service_s <= LONGEST_S for t in tasks)
        assert len(tasks) < 2 * MAX_TASKS
        assert all(t.priority in (0, 6, 9) for t in tasks)


def test_load_is_a_share_of_the_fleet_s_capacity():
    # A Poisson trace's work over its span, per slot: its drawn load, 0.05 to 1.5 (give or take the draw).
    for seed in range(10):
        trace = family("heavy-tail", seed, 40)
        load = float(trace.about.split("load ")[1].split(",")[0])
        assert 0.05 <= load <= 1.5
        work = sum(t.service_s for t in trace.tasks) / (2 * 3600) / 40
        assert work == pytest.approx(load, rel=0.6, abs=0.03)


def test_start_ups_are_drawn_per_trace_warm_and_cold():
    setups = [family_setup("poisson", seed) for seed in range(20)]
    assert all(20 <= s.startup_s <= 60 and 30 <= s.cold_node_s <= 120 for s in setups)
    assert len({s.startup_s for s in setups}) > 10


def test_the_cli_runs_a_family_by_seed():
    done = subprocess.run(
        [sys.executable, "-m", "gpufleet", "simulate", "--family", "rare", "--seed", "2", "--max-replicas", "10",
         "--policies", "gpufleet,keda", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["trace"] == "rare-2" and set(out["policies"]) == {"gpufleet", "keda"}
    assert out["settings"]["startup_s"] == family_setup("rare", 2).startup_s
    bad = subprocess.run([sys.executable, "-m", "gpufleet", "simulate", "--family", "nope"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "the families are" in bad.stderr
