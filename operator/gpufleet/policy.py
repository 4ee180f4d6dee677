"""The scaling rule: one pure function from what was observed to how many worker pods a fleet should have.

No I/O and no clock: `now` comes in with the observation, the history comes in and goes out. The operator's
timer and the simulator both call `decide`, so what the simulator shows is what the operator does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpufleet.model import Depth, Observation
from gpufleet.spec import ScalingSpec


@dataclass(frozen=True)
class History:
    """What the policy remembers between ticks."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, recommendation) within the longest window
    last_busy: float | None = None  # last time anything was queued or running


def seeded(now: float, current: int) -> History:
    """The history of a fleet first seen now (an operator start): as if `current` had just been recommended,
    so a restarted operator waits a whole stabilization window before it scales anything down."""
    # A hair in the past: inside any scale-down window, outside a zero-length scale-up window.
    return History(((now - 1e-3, current),), now)


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    recommendation: int  # what the load alone asks for, within [min, max]
    history: History
    limited_by: str | None = None  # set when a limit (capacity, budget, busy workers, step, max) held it back

    def changes(self, current: int) -> bool:
        return self.replicas != current


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _recommend(spec: ScalingSpec, obs: Observation, depth: Depth, last_busy: float) -> tuple[int, str]:
    """What the load asks for, before windows, steps and limits."""
    load = depth.total
    seen = f"{depth.queued} queued + {depth.reserved} running"
    if load == 0:
        if obs.current == 0:
            return 0, "nothing queued or running"
        idle_for = obs.now - last_busy
        if idle_for >= spec.idle_seconds_before_zero:
            return 0, f"nothing queued or running for {spec.idle_seconds_before_zero}s"
        # No elapsed seconds in this text: the reason goes into the status, which must not change every tick.
        return 1, f"nothing queued or running; zero after {spec.idle_seconds_before_zero}s idle"
    if obs.current == 0 and depth.queued < spec.activation_threshold:
        return 0, f"{seen}, below the activation threshold of {spec.activation_threshold}"
    if spec.drain_within_seconds and obs.throughput:
        wanted = math.ceil(load / (obs.throughput * spec.drain_within_seconds))
        return (
            wanted,
            f"{seen}, {obs.throughput:.2g} tasks/s per worker, drain within {spec.drain_within_seconds}s",
        )
    wanted = math.ceil(load / spec.target_tasks_per_replica)
    return wanted, f"{seen}, target {spec.target_tasks_per_replica} per replica"


def _window(history: tuple[tuple[float, int], ...], now: float, seconds: float) -> list[int]:
    return [r for t, r in history if t >= now - seconds]


def demand(spec: ScalingSpec, obs: Observation, history: History = History()) -> int:
    """What the load alone asks for, within [min, max]: a fleet's claim on a shared GPU budget. It is the
    `recommendation` that `decide` reports, known before the budget is divided."""
    if spec.paused or obs.depth is None:
        return obs.current
    wanted, _ = _recommend(spec, obs, obs.depth, _last_busy(obs, history))
    return min(max(wanted, spec.min_replicas), spec.max_replicas)


def _last_busy(obs: Observation, history: History) -> float:
    return obs.now if obs.depth.total > 0 or history.last_busy is None else history.last_busy


def decide(spec: ScalingSpec, obs: Observation, history: History = History()) -> Decision:
    """Desired replicas for one fleet, with the reason that goes into its status and Events."""
    current = obs.current
    if spec.paused:
        return Decision(current, f"paused: holding {current}", current, history)
    if obs.depth is None:
        return Decision(
            current,
            f"broker unreachable: holding {current} (never scaled down on an unknown depth)",
            current,
            history,
        )

    depth = obs.depth
    last_busy = _last_busy(obs, history)
    wanted, why = _recommend(spec, obs, depth, last_busy)
    recommendation = min(max(wanted, spec.min_replicas), spec.max_replicas)
    longest = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    kept = tuple((t, r) for t, r in history.recommendations if t >= obs.now - longest)
    new_history = History(kept + ((obs.now, recommendation),), last_busy)

    limited_by, held = (
        ("maxReplicas", f"maxReplicas {spec.max_replicas}") if wanted > spec.max_replicas else (None, None)
    )
    target = current
    if recommendation > current:
        floor = min(_window(new_history.recommendations, obs.now, spec.scale_up_stabilization_seconds))
        # An older, lower recommendation in the window can hold a scale-up back, never turn it into a scale-down.
        target = max(current, min(floor, current + spec.max_step_up))
        if floor < recommendation:
            limited_by = "scaleUpStabilization"
            held = f"the lowest recommendation of the last {spec.scale_up_stabilization_seconds}s"
        elif target < recommendation:
            limited_by, held = "maxStepUp", f"at most {spec.max_step_up} added at once"
    elif recommendation < current:
        ceiling = max(_window(new_history.recommendations, obs.now, spec.scale_down_stabilization_seconds))
        target = min(current, max(ceiling, current - spec.max_step_down))
        if ceiling > recommendation:
            held = f"the highest recommendation of the last {spec.scale_down_stabilization_seconds}s"
        elif target > recommendation:
            held = f"at most {spec.max_step_down} removed at once"
        if obs.idle_workers is not None and target < current - obs.idle_workers:
            target = current - obs.idle_workers
            limited_by, held = (
                "busyWorkers",
                f"only idle workers are removed ({_plural(obs.idle_workers, 'idle worker')})",
            )

    if obs.schedulable is not None and target > max(current, obs.schedulable):
        target = max(current, obs.schedulable)
        limited_by, held = "gpuCapacity", f"GPU capacity: {obs.schedulable} pods schedulable"
    if obs.budget is not None and target > obs.budget:
        if obs.budget >= current:
            target = obs.budget
        else:
            lowest = obs.budget if obs.idle_workers is None else max(obs.budget, current - obs.idle_workers)
            target = min(target, lowest)
        limited_by, held = "gpuBudget", f"the fleet-wide GPU budget: {obs.budget} pods"
    target = min(max(target, spec.min_replicas), spec.max_replicas)

    if target > current:
        head = f"scale up {current} -> {target}"
    elif target < current:
        head = f"scale down {current} -> {target}"
    else:
        head = f"hold {_plural(current, 'replica')}"
    reason = f"{head}: {why}"
    if held and (target != recommendation or limited_by == "maxReplicas"):
        reason += f"; recommended {recommendation}, held by {held}"
    return Decision(target, reason, recommendation, new_history, limited_by)
