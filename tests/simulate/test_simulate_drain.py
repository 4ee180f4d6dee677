"""gpufleet-drain: the operator's policy sizing by throughput (drainWithinSeconds), with the rate measured by the
operator's own meter from the `done` counters the simulated workers publish."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet import policy as real_policy
from gpufleet import throughput as real_throughput
from gpufleet.cli import main
from gpufleet.model import WorkerState
from gpufleet_tools.simulate import policies
from gpufleet_tools.simulate.engine import Setup, simulate
from gpufleet_tools.simulate.metrics import KEYS, summarize
from gpufleet_tools.simulate.policies import Gpufleet, GpufleetDrain, gpufleet_spec
from gpufleet_tools.simulate.traces import Task, Trace


def trace(tasks) -> Trace:
    return Trace("t", tuple(sorted(tasks, key=lambda t: t.arrival_s)))


def test_the_variant_runs_the_operator_decide_and_meter_themselves():
    assert policies.decide is real_policy.decide
    assert policies.measure is real_throughput.measure
    drain = GpufleetDrain(gpufleet_spec({"maxReplicas": "7"}), 123)
    assert drain.name == "gpufleet-drain"
    assert drain.spec.drain_within_seconds == 123 and drain.spec.max_replicas == 7
    assert (drain.initial, drain.resting, drain.marks_deletion_cost) == (0, 0, True)


def test_the_meter_reads_what_the_workers_publish(monkeypatch):
    # Two tasks of 10 s at t=0, pods ready at 5: a starting pod has no entry; then busy since 5, done 0; then
    # idle since 15, done 1.
    seen = {}

    def spy(meter, workers, now, depth=None, created=None):
        seen[now] = dict(workers)
        return real_throughput.measure(meter, workers, now, depth, created)

    monkeypatch.setattr(policies, "measure", spy)
    simulate(trace([Task(0, 10), Task(0, 10)]), GpufleetDrain(gpufleet_spec({})), Setup(startup_s=5))
    assert seen[3] == {}
    assert sorted((w.busy, w.active, w.done, w.since) for w in seen[10].values()) == [(True, 1, 0, 5)] * 2
    assert sorted((w.busy, w.active, w.done, w.since) for w in seen[16].values()) == [(False, 0, 1, 15)] * 2
    assert all(isinstance(w, WorkerState) and w.expires > 16 for w in seen[16].values())


def test_before_a_rate_exists_it_sizes_by_target_tasks_per_replica(decisions):
    # Nothing has finished before t=130 (start-up 30 s, tasks of 100 s): no rate, so 8 tasks ask for 8 pods, as
    # targetTasksPerReplica 1 does. With a rate of 0.01 tasks/s, drainWithinSeconds 600 would ask for 2. The
    # task at 300 s is sized by the rate.
    tasks = trace([Task(0, 100)] * 8 + [Task(300, 100)])
    simulate(tasks, GpufleetDrain(gpufleet_spec({}), 600), Setup(startup_s=30))
    first_obs, first = decisions[0]
    assert first_obs.throughput is None
    assert first.replicas == 8 and "target 1 per replica" in first.reason
    assert all(obs.throughput is None for obs, _ in decisions if obs.now < 130)
    measured = [(obs, d) for obs, d in decisions if obs.throughput is not None]
    assert measured and measured[0][0].now >= 130
    assert "drain within 600s" in next(d.reason for obs, d in measured if obs.depth.total)


@pytest.mark.parametrize("slots", [1, 2])
def test_the_measured_rate_converges_to_slots_over_the_service_time(decisions, slots):
    # A backlog that keeps 4 pods busy for ~1,000 s with tasks of 8 to 12 s (mean 10).
    rng = random.Random(7)
    tasks = trace([Task(0, rng.uniform(8, 12)) for _ in range(400 * slots)])
    spec = gpufleet_spec({"maxReplicas": "4"})
    run = simulate(tasks, GpufleetDrain(spec), Setup(startup_s=0, slots=slots))
    assert run.completions == len(tasks.tasks)
    expected = slots / statistics.mean(t.service_s for t in tasks.tasks)
    rates = [obs.throughput for obs, _ in decisions if 200 <= obs.now <= 900]
    assert statistics.mean(rates) == pytest.approx(expected, rel=0.05)
    assert all(0.6 * expected < r < 1.4 * expected for r in rates)


def test_the_measured_rate_of_minute_long_tasks_stays_within_a_factor_of_two(decisions):
    tasks = trace([Task(0, 300)] * 40)
    simulate(tasks, GpufleetDrain(gpufleet_spec({"maxReplicas": "4"})), Setup(startup_s=0))
    rates = [obs.throughput for obs, _ in decisions if 600 <= obs.now <= 2700]
    assert all(1 / 600 < r < 2 / 300 for r in rates)


def warm_up_then_burst(burst: int) -> Trace:
    """20 tasks of 10 s to measure a rate, then, 2,000 s later (the fleet back at zero), a burst at once."""
    return trace([Task(0, 10)] * 20 + [Task(2000, 10)] * burst)


def test_a_large_burst_gets_enough_workers_to_drain_within_the_target(decisions):
    # 2,400 tasks of 10 s, drain within 600 s: 2,400 / (0.1 * 600) = 40 workers; targetTasksPerReplica 1
    # would ask for all 100.
    tasks = warm_up_then_burst(2400)
    run = simulate(tasks, GpufleetDrain(gpufleet_spec({"maxReplicas": "100"}), 600), Setup(startup_s=60))
    assert run.completions == len(tasks.tasks) and run.interrupted == 0
    burst = [(obs, d) for obs, d in decisions if obs.now >= 2000 and obs.depth.total]
    at_burst, sized = burst[0]
    assert at_burst.current == 0 and at_burst.throughput == pytest.approx(0.1, rel=0.2)
    assert sized.recommendation == math.ceil(2400 / (at_burst.throughput * 600))
    # until the new workers report: 40 of them, give or take the rate's error
    assert 34 <= max(d.replicas for obs, d in burst if obs.now < 2060) <= 46
    assert max(r for _, _, r in run.timeline) < 100
    # drained within the target, give or take the pods' start-up and the rate's error
    assert max(run.finished) - 2000 <= 1.15 * (600 + 60)


def test_the_fleet_stays_near_its_size_once_the_workers_start():
    tasks = warm_up_then_burst(2400)
    run = simulate(tasks, GpufleetDrain(gpufleet_spec({"maxReplicas": "100"}), 600), Setup(startup_s=60))
    assert max(r for _, _, r in run.timeline) <= 46


def test_a_burst_larger_than_max_replicas_can_drain_in_time_stops_at_max_replicas(decisions):
    tasks = warm_up_then_burst(2400)
    run = simulate(tasks, GpufleetDrain(gpufleet_spec({"maxReplicas": "20"}), 600), Setup(startup_s=60))
    assert run.completions == len(tasks.tasks)
    assert max(r for t, _, r in run.timeline if t >= 2000) == 20
    burst = [d for obs, d in decisions if obs.now >= 2000 and obs.depth.total]
    assert burst[0].recommendation == 20 and "drain within 600s" in burst[0].reason
    assert "held by maxReplicas 20" in next(d.reason for d in burst if d.limited_by == "maxReplicas")


def test_a_longer_drain_target_takes_fewer_gpus_for_the_same_burst():
    tasks, setup = warm_up_then_burst(1200), Setup(startup_s=60)
    spec = gpufleet_spec({"maxReplicas": "100"})
    fast, slow = (summarize(simulate(tasks, GpufleetDrain(spec, s), setup)) for s in (300, 1200))
    assert fast["peak_replicas"] > slow["peak_replicas"]
    assert fast["drain_s"] < slow["drain_s"]


def test_with_the_wait_target_off_the_measurements_change_nothing(monkeypatch):
    tasks, setup = warm_up_then_burst(300), Setup(startup_s=60)
    off = gpufleet_spec({"maxReplicas": "20", "targetWaitSeconds": "0"})
    default = gpufleet_spec({"maxReplicas": "20"})
    measured = [simulate(tasks, Gpufleet(s), setup) for s in (off, default)]
    monkeypatch.setattr(policies, "measure", lambda *args, **kwargs: real_throughput.Meter())
    unmeasured = [simulate(tasks, Gpufleet(s), setup) for s in (off, default)]
    assert measured[0].timeline == unmeasured[0].timeline and measured[0].finished == unmeasured[0].finished
    # By default the measurements size the fleet.
    assert measured[1].timeline != unmeasured[1].timeline


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.builds(Task, st.floats(0, 1500), st.floats(0.5, 300)), min_size=1, max_size=30),
    st.sampled_from([0.0, 30.0, 120.0]),
    st.integers(1, 3),
    st.sampled_from([0.0, 15.0]),
    st.sampled_from([0.0, 30.0]),
    st.integers(1, 6),
    st.sampled_from([1, 30, 600, 3600]),
)
def test_every_task_completes_exactly_once(tasks, startup, slots, redelivery, grace, max_replicas, drain):
    setup = Setup(startup_s=startup, slots=slots, redelivery_s=redelivery, grace_s=grace)
    spec = gpufleet_spec({"maxReplicas": str(max_replicas)})
    run = simulate(trace(tasks), GpufleetDrain(spec, drain), setup)
    assert run.completions == len(tasks)
    assert run.interrupted == 0  # like gpufleet, it removes idle pods only
    for task, start, end in zip(run.trace.tasks, run.started, run.finished, strict=True):
        assert start >= task.arrival_s
        assert end == pytest.approx(start + task.service_s)
    assert max(r for _, _, r in run.timeline) <= max_replicas


def test_the_cli_shows_the_variant_and_takes_its_target(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,service_s\n" + "".join(f"{i % 7},{10 + i % 5}\n" for i in range(60)))
    assert main(["simulate", "--trace", str(path), "--json", "--drain-within-s", "120"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["policies"]) == ["gpufleet", "gpufleet-drain", "keda", "ray-serve", "static"]
    assert set(KEYS) <= set(out["policies"]["gpufleet-drain"])
    assert out["settings"]["drain_within_s"] == 120
    assert main(["simulate", "--trace", str(path), "--json", "--spec", "drainWithinSeconds=90"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["drain_within_s"] == 90
    assert main(["simulate", "--trace", str(path), "--drain-within-s", "100000"]) == 2
    assert "drainWithinSeconds: must be at most 86400" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--trace", str(path), "--drain-within-s", "0"])
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["simulate", "--trace", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gpufleet-drain" in out and "drain_within_s 600" in out
