"""The scaling rule: one pure function from what was observed to how many worker pods a fleet should have.

No I/O and no clock: `now` comes in with the observation, the history comes in and goes out. The operator's
timer and the simulator both call `decide`, so what the simulator shows is what the operator does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gpufleet.model import Depth, Observation
from gpufleet.spec import ScalingSpec

# Under the wait target, changes less than this share of the measured start-up apart are gathered into one step
# (scale-ups, before the start-up is measured, this share of the oldest starting pod's age): a pod asked that
# much later is ready that much later (a quarter of what a new pod makes its tasks wait anyway), and a pod
# already due to go that goes that much later idles no longer than a quarter of a start-up.
GATHER_SHARE = 0.25
GAPS_KEPT = 8  # idle gaps the history remembers: what a warm pod held through the next one would be worth
# Under the wait target, the steady load is given the pods that hold a queue whose tasks wait this share of the
# target: busy workers with work waiting for them, rather than idle ones waiting for work.
QUEUE_SHARE = 0.7
# Until its service time and start-up are measured, a fleet under an explicit targetWaitSeconds runs one pod
# (which measures them) for this share of the target before targetTasksPerReplica sizes it.
MEASURE_SHARE = 0.5


@dataclass(frozen=True)
class History:
    """What the policy remembers between ticks."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, recommendation) within the longest window
    last_busy: float | None = None  # last time anything was queued or running
    last_down: float | None = None  # last time the replicas were lowered
    down_cut: bool = False  # that scale-down stopped above the recommendation: more pods are due to go
    last_up: float | None = None  # last time the replicas were raised
    # While worker pods cannot start: how many workers were ready when that began (None: no pod failing), and
    # whether one more has become ready since (the cause is fixed: scaling goes on as usual).
    ready_when_failing: int | None = None
    started_since: bool = False
    # Learned from the fleet's own load: the last GAPS_KEPT idle gaps, in seconds (from nothing queued or
    # running to the next task), oldest first. Shown in status.idleGaps.
    gaps: tuple[float, ...] = ()
    # Since when tasks have waited for a fleet under an explicit targetWaitSeconds whose work is not measured yet.
    unmeasured_since: float | None = None


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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _recommend(
    spec: ScalingSpec,
    obs: Observation,
    depth: Depth,
    last_busy: float,
    gaps: tuple[float, ...] = (),
    unmeasured_since: float | None = None,
) -> tuple[int, str]:
    """What the load asks for, before windows, steps and limits."""
    load = depth.total
    seen = f"{depth.queued} queued + {depth.reserved} running"
    if load == 0:
        if obs.current == 0:
            return 0, "nothing queued or running"
        idle_for = obs.now - last_busy
        if idle_for >= spec.idle_seconds_before_zero:
            return 0, f"nothing queued or running for {spec.idle_seconds_before_zero}s"
        if not _warm_pays(spec, obs, gaps):
            return 0, "nothing queued or running; no warm pod kept (" + _why_cold(spec, obs) + ")"
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
    if _sized_for_wait(spec, obs):
        wanted, why = size_for_wait(spec, obs, depth)
        return wanted, f"{seen}, {why}"
    wanted = math.ceil(load / spec.target_tasks_per_replica)
    if unmeasured_since is not None and obs.now - unmeasured_since < spec.target_wait_seconds * MEASURE_SHARE:
        # Under an explicit target, one pod measures the work before a pod per task is started for it: short
        # tasks need no more, and the target allows the wait.
        return (
            min(wanted, max(obs.current, 1)),
            f"{seen}, one pod measures the work first (target {spec.target_wait_seconds}s)",
        )
    return wanted, f"{seen}, target {spec.target_tasks_per_replica} per replica"


def _fmt(x: float) -> str:
    """A measured figure to two significant digits, so that a reason changes only when a figure does."""
    return f"{x:.2g}" if x < 100 else f"{x:.0f}"


def _warm_pays(spec: ScalingSpec, obs: Observation, gaps: tuple[float, ...]) -> bool:
    """Whether a pod kept warm through an idle gap (up to idleSecondsBeforeZero) is worth its GPU time. Under the
    wait target, only if a task arriving to no pod would wait longer than the target (a start-up), and the
    fleet's own idle gaps say the next task is likely to come while the pod is kept: at least half of the last
    ones were shorter than idleSecondsBeforeZero (none learned yet: it is kept). Otherwise, and without a wait
    target, it is kept, as idleSecondsBeforeZero says."""
    if not _sized_for_wait(spec, obs):
        return True
    if obs.startup_s <= wait_target(spec, obs.service_s, obs.startup_s):
        return False
    if not gaps:
        return True
    return 2 * sum(1 for g in gaps if g <= spec.idle_seconds_before_zero) >= len(gaps)


def _zero_at_once(spec: ScalingSpec, obs: Observation, gaps: tuple[float, ...]) -> bool:
    """Whether an idle fleet under the wait target goes to zero at once rather than after its scale-down window:
    when most of the fleet's own idle gaps were longer than the window, and a pod kept through it would have cost
    more, on average over those gaps, than a start-up. Kept, it idles min(gap, window) of each gap and still
    needs a start-up after each gap longer than the window; let go at once, it needs a start-up after every gap.
    With no gap learned yet, the window holds."""
    window, startup = spec.scale_down_stabilization_seconds, obs.startup_s
    longer = sum(1 for g in gaps if g > window)
    kept = sum(min(g, window) + (startup if g > window else 0.0) for g in gaps)
    return 2 * longer > len(gaps) and kept > startup * len(gaps)


def _gather(spec: ScalingSpec, obs: Observation) -> tuple[float, str]:
    """How long after a scale-up the next one waits under the wait target, and how the reason says it:
    GATHER_SHARE of the start-up. Before the start-up is measured, of the oldest starting pod's age, which a
    start-up takes at least: pods asked a tick apart while a queue fills are ready a tick apart, so they are
    asked in one step. 0 without the wait target."""
    if not _wait_target_on(spec):
        return 0.0, ""
    if obs.startup_s is not None:
        gather = obs.startup_s * GATHER_SHARE
        return gather, f"new pods asked at most every {_fmt(gather)}s"
    # No figure in this text: it would change every tick as the pod ages.
    return max(obs.starting, default=0.0) * GATHER_SHARE, "new pods asked in steps while the first start"


def _why_cold(spec: ScalingSpec, obs: Observation) -> str:
    if obs.startup_s <= wait_target(spec, obs.service_s, obs.startup_s):
        return "a start-up meets the wait target"
    return f"most idle gaps are longer than {spec.idle_seconds_before_zero}s"


@dataclass(frozen=True)
class _Fleet:
    """The fleet as a fluid model sees it over the next minutes: each ready slot starts one task every
    `service_s`, an idle slot one at once; a pod not ready yet starts `slots` tasks when it is, then as many
    every `service_s`."""

    ready: int  # pods whose workers take tasks
    idle_slots: int
    later: tuple[float, ...]  # for each pod still starting, seconds until it takes tasks, soonest first
    slots: int
    service_s: float
    new: int = 0  # pods not asked for yet, each taking tasks after `startup_s`
    startup_s: float = 0.0

    def starts(self, t: float, before: float | None = None) -> float:
        """Tasks started within t seconds (`before`: counting only the pods ready strictly before it)."""
        k, s = self.slots, self.service_s

        def counted(e: float) -> bool:
            return e <= t and (before is None or e < before)

        n = self.idle_slots + self.ready * k * t / s
        n += sum(k * (1 + (t - e) / s) for e in self.later if counted(e))
        if self.new and counted(self.startup_s):
            n += self.new * k * (1 + (t - self.startup_s) / s)
        return n

    def starts_in_time(self, queued: int, arrival_rate: float, wait: float, lead: float) -> bool:
        """Whether every queued task, and every task arriving within the next `lead` seconds, starts within
        `wait` seconds of its arrival. Checked where the fluid comes closest: at `wait`, just before each later
        pod is ready, and at the end of the lead."""
        if self.starts(wait) < queued:
            return False
        moments = {e for e in self.later if wait < e < wait + lead}
        if self.new and wait < self.startup_s < wait + lead:
            moments.add(self.startup_s)
        if arrival_rate > 0:
            moments.add(wait + lead)
        return all(self.starts(t, before=t) >= queued + arrival_rate * (t - wait) for t in moments)

    def first(self, pods: int) -> _Fleet:
        """The fleet with only its first `pods` pods: ready ones before the others, and among those the busy
        ones first (a scale-in removes idle pods)."""
        ready = min(self.ready, pods)
        busy = self.ready * self.slots - self.idle_slots
        idle = max(0, min(self.idle_slots, ready * self.slots - busy))
        return _Fleet(ready, idle, self.later[: max(0, pods - ready)], self.slots, self.service_s)

    def plus(self, pods: int, startup_s: float) -> _Fleet:
        return _Fleet(self.ready, self.idle_slots, self.later, self.slots, self.service_s, pods, startup_s)


def _least(low: int, high: int, ok) -> int | None:
    """The least n in [low, high] with ok(n), for ok monotone in n; None when ok(high) is false."""
    if high < low or not ok(high):
        return None
    while low < high:
        mid = (low + high) // 2
        if ok(mid):
            high = mid
        else:
            low = mid + 1
    return low


def _wait_target_on(spec: ScalingSpec) -> bool:
    """Whether the spec sizes by the wait target: it is not turned off (0) and drainWithinSeconds is not set."""
    return spec.target_wait_seconds != 0 and not spec.drain_within_seconds


def _sized_for_wait(spec: ScalingSpec, obs: Observation) -> bool:
    """Whether the wait target sizes the fleet: it is on, and the fleet's service time and start-up have been
    measured."""
    return _wait_target_on(spec) and bool(obs.service_s) and obs.startup_s is not None


def wait_target(spec: ScalingSpec, service_s: float, startup_s: float) -> float:
    """targetWaitSeconds, or by default the longer of a pod's start-up and a task's service time: a task need
    not wait less than a new pod takes to start (only idle pods kept on the off chance could do better), nor
    less than its own run when that is longer (a busy worker frees up within about that long)."""
    return spec.target_wait_seconds or max(startup_s, service_s)


def size_for_wait(spec: ScalingSpec, obs: Observation, depth: Depth) -> tuple[int, str] | None:
    """Workers for the wait target, from the fleet's measured service time, start-up and arrival rate; None
    while the first two are unmeasured (or the target is off): then targetTasksPerReplica sizes the fleet.

    The larger of two counts:
    - the backlog: the fewest pods with which every queued task, and every task arriving meanwhile, starts
      within the target (a fluid model: `_Fleet`), counting the pods that are ready, then those still starting,
      then new ones, each from when it can take tasks (a new one after the measured start-up). A pod still
      starting that will find a task waiting when it is ready is kept: its start-up is spent. New pods are
      asked for only if each is worth what it costs beyond its work, its start-up and the scale-down window it
      idles through at the end: no more than would clear the backlog left when they are ready within that
      long (so none that would be ready after the backlog it was meant for is gone), but at least enough for
      the backlog to shrink. When no number of new pods meets the target (it is shorter than a start-up), that
      bound alone sizes them.
    - the steady load: the pods that start tasks as fast as they arrive (Little's law: arrival rate x service
      time, in busy slots), plus or minus those that bring the queue, within the target, to where its tasks
      wait QUEUE_SHARE of the target (a queue of arrival rate x that wait), rounded to the nearest pod. Below
      that queue, fewer pods than the load needs let it build, so the pods kept stay busy rather than idle
      between arrivals. It keeps pods; it never adds one.

    Then no pod is removed that the backlog would ask back: with fewer pods the queue moves, for a start-up and
    the scale-down window (what a pod asked back costs), at the rate they leave it; if their tasks would then no
    longer start within the target, the pod stays. Without this a fleet around the queue level lets a pod go
    and asks it back a little later, a start-up paid each time.
    """
    if not _sized_for_wait(spec, obs):
        return None
    service, startup, arrival = obs.service_s, obs.startup_s, obs.arrival_rate or 0.0
    wait = wait_target(spec, service, startup)
    k, queued, current = obs.slots, depth.queued, obs.current
    ready = current if obs.ready is None else min(obs.ready, current)
    ages = sorted(obs.starting, reverse=True)[: current - ready]
    ages += [0.0] * (current - ready - len(ages))  # asked for, not created yet
    later = tuple(sorted(max(0.0, startup - age) for age in ages))
    fleet = _Fleet(ready, max(0, ready * k - depth.reserved), later, k, service)

    if fleet.starts_in_time(queued, arrival, wait, startup):
        backlog = _least(0, current, lambda n: fleet.first(n).starts_in_time(queued, arrival, wait, startup))
        finding = [e for e in fleet.later if queued + arrival * e - fleet.starts(e, before=e) >= 1]
        if finding:
            backlog = max(backlog, ready + len(finding))
        how = f"start them within {_fmt(wait)}s"
    else:
        left = max(0.0, queued + arrival * startup - fleet.starts(startup, before=startup))
        # The pods worth their start-up drain what is left within what each costs beyond its work, or, under a
        # target shorter than the default, within that share of it: the target bounds their worth.
        share = min(1.0, wait / max(startup, service, 1.0))
        overhead = max((startup + spec.scale_down_stabilization_seconds) * share, 1.0)
        worth = math.floor((left / overhead + arrival) * service / k) - current
        shrinks = math.floor(arrival * service / k) + 1 - current if left > 0 else 0
        new = min(math.ceil(left / k), max(worth, shrinks, 0))
        if wait < startup:
            # Asked to start tasks sooner than a pod starts: only a pod for every task left can come close.
            new = math.ceil(left / k)
        enough = _least(
            1, new, lambda n: fleet.plus(n, startup).starts_in_time(queued, arrival, wait, startup)
        )
        backlog = current + (new if enough is None else enough)
        how = (
            f"start them within {_fmt(wait)}s"
            if enough is not None
            else f"start them as soon as new pods are worth their start-up (target {_fmt(wait)}s)"
        )
    excess = queued - arrival * wait * QUEUE_SHARE
    steady = min(math.floor((arrival + excess / wait) * service / k + 0.5), current)
    wanted = max(backlog, steady)
    if wanted < current:
        # No pod is removed that the backlog would ask back within what a comeback costs: a start-up and the
        # scale-down window it idles through at the end.
        horizon = startup + spec.scale_down_stabilization_seconds
        kept = _least(wanted, current, lambda n: _kept(fleet, n, queued, arrival, wait, startup, horizon))
        wanted = current if kept is None else kept
    why = (
        f"{_fmt(arrival)} tasks/s arriving, {_fmt(service)}s per task, {_fmt(startup)}s start-up: "
        f"{_plural(wanted, 'pod')} {how}"
    )
    return wanted, why


def _kept(
    fleet: _Fleet, pods: int, queued: int, arrival: float, wait: float, startup: float, horizon: float
) -> bool:
    """Whether `pods` of the fleet still start its tasks within the target once the queue has moved for
    `horizon` seconds at the rate those pods leave it. If not, the backlog would ask a pod removed now back
    within that long."""
    later = max(0.0, queued + (arrival - pods * fleet.slots / fleet.service_s) * horizon)
    return fleet.first(pods).starts_in_time(later, arrival, wait, startup)


def _window(history: tuple[tuple[float, int], ...], now: float, seconds: float) -> list[int]:
    return [r for t, r in history if t >= now - seconds]


@dataclass(frozen=True)
class Recommendation:
    """What the load alone asks for, worked out once per fleet per tick: the budget's claim (`pods`) and the
    start of `decide`, which takes it rather than work it out again."""

    pods: int  # within [min, max]
    wanted: int  # before [min, max]
    why: str
    last_busy: float | None  # None: paused or the depth unknown (nothing recommended)
    unmeasured_since: float | None = None  # History.unmeasured_since after this tick


def recommend(spec: ScalingSpec, obs: Observation, history: History = History()) -> Recommendation:
    if spec.paused or obs.depth is None:
        return Recommendation(obs.current, obs.current, "", None)
    last_busy = _last_busy(obs, history)
    since = _unmeasured_since(spec, obs, history)
    wanted, why = _recommend(spec, obs, obs.depth, last_busy, history.gaps, since)
    pods = min(max(wanted, spec.min_replicas), spec.max_replicas)
    return Recommendation(pods, wanted, why, last_busy, since)


def _unmeasured_since(spec: ScalingSpec, obs: Observation, history: History) -> float | None:
    """Since when tasks have waited for a fleet under an explicit targetWaitSeconds whose service time or
    start-up is not measured yet; None when nothing waits, it is measured, or no explicit target is set. For a
    known depth (`recommend` asks for none other)."""
    explicit = spec.target_wait_seconds and not spec.drain_within_seconds
    if not explicit or obs.depth.total == 0 or _sized_for_wait(spec, obs):
        return None
    return obs.now if history.unmeasured_since is None else history.unmeasured_since


def demand(spec: ScalingSpec, obs: Observation, history: History = History()) -> int:
    """What the load alone asks for, within [min, max]: a fleet's claim on a shared GPU budget. It is the
    `recommendation` that `decide` reports, known before the budget is divided."""
    return recommend(spec, obs, history).pods


def _last_busy(obs: Observation, history: History) -> float:
    return obs.now if obs.depth.total > 0 or history.last_busy is None else history.last_busy


def _stall(obs: Observation, history: History) -> tuple[History, bool]:
    """Whether the fleet's new pods fail to start: then no more are asked for (they would hold GPUs and run
    nothing) until a worker becomes ready, which says the cause is fixed. Told by the pods' states (an image that
    cannot be pulled, a crash, a missing Secret), never by a pod merely slow to start."""
    ready = obs.ready or 0
    if not obs.failing:
        return dataclasses.replace(history, ready_when_failing=None, started_since=False), False
    if history.ready_when_failing is None:
        return dataclasses.replace(history, ready_when_failing=ready, started_since=False), True
    started = history.started_since or ready > history.ready_when_failing
    # Fewer ready (an idle worker removed) lowers the mark: the next worker to start counts.
    mark = history.ready_when_failing if started else min(ready, history.ready_when_failing)
    return dataclasses.replace(history, ready_when_failing=mark, started_since=started), not started


def decide(
    spec: ScalingSpec,
    obs: Observation,
    history: History = History(),
    recommended: Recommendation | None = None,
) -> Decision:
    """Desired replicas for one fleet, with the reason that goes into its status and Events. `recommended` is
    `recommend`'s answer for the same spec, observation (its budget aside) and history, when the caller has it."""
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
    paced = _sized_for_wait(spec, obs)
    rec = recommended if recommended is not None else recommend(spec, obs, history)
    last_busy, wanted, why, recommendation = rec.last_busy, rec.wanted, rec.why, rec.pods
    longest = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    kept = tuple((t, r) for t, r in history.recommendations if t >= obs.now - longest)
    gaps = history.gaps
    if depth.total > 0 and history.last_busy is not None:
        gap = obs.now - history.last_busy
        if gap >= 2 * spec.poll_interval_seconds:  # a tick or more saw nothing queued or running
            gaps = (*gaps, round(gap, 1))[-GAPS_KEPT:]
    new_history = dataclasses.replace(
        history,
        recommendations=kept + ((obs.now, recommendation),),
        last_busy=last_busy,
        gaps=gaps,
        unmeasured_since=rec.unmeasured_since,
    )

    limited_by, held = (
        ("maxReplicas", f"maxReplicas {spec.max_replicas}") if wanted > spec.max_replicas else (None, None)
    )
    target = current
    gather, gathered = _gather(spec, obs)
    if recommendation > current:
        floor = min(_window(new_history.recommendations, obs.now, spec.scale_up_stabilization_seconds))
        # An older, lower recommendation in the window can hold a scale-up back, never turn it into a scale-down.
        step_up = spec.max_step_up
        target = max(current, floor if step_up is None else min(floor, current + step_up))
        if floor < recommendation:
            limited_by = "scaleUpStabilization"
            held = f"the lowest recommendation of the last {spec.scale_up_stabilization_seconds}s"
        elif current > 0 and history.last_up is not None and obs.now - history.last_up < gather:
            # Pods asked a few seconds apart are ready a few seconds apart: gather them into one step.
            target = current
            limited_by, held = "scaleUpStabilization", gathered
        elif target < recommendation:
            limited_by, held = "maxStepUp", f"at most {spec.max_step_up} added at once"
    elif recommendation < current:
        window = spec.scale_down_stabilization_seconds
        # An idle fleet whose idle gaps say a start-up costs less than a pod kept through the window skips it.
        at_once = paced and recommendation == 0 and depth.total == 0 and _zero_at_once(spec, obs, gaps)
        if at_once:
            why += f"; at once: its idle gaps say a start-up costs less than a {window}s window"
        ceiling = recommendation if at_once else max(_window(new_history.recommendations, obs.now, window))
        step_down = spec.max_step_down
        target = min(current, ceiling if step_down is None else max(ceiling, current - step_down))
        since_down = None if history.last_down is None else obs.now - history.last_down
        # Under the wait target, pods that go idle at different times leave together: after a scale-down down to
        # the recommendation, the next waits a whole window; after one held above it (by the window, busy
        # workers or maxStepDown), the pods already due go as they come free, gathered like new pods.
        pause = (gather if history.down_cut else window) if paced else 0.0
        if not at_once and since_down is not None and since_down < pause:
            target = current
            limited_by, held = "scaleDownStabilization", f"pods removed at most every {_fmt(pause)}s"
        elif ceiling > recommendation:
            limited_by, held = "scaleDownStabilization", f"the highest recommendation of the last {window}s"
        elif target > recommendation:
            limited_by, held = "maxStepDown", f"at most {spec.max_step_down} removed at once"
        if obs.idle_workers is not None and target < current - obs.idle_workers:
            target = current - obs.idle_workers
            limited_by, held = (
                "busyWorkers",
                f"only idle workers are removed ({_plural(obs.idle_workers, 'idle worker')})",
            )

    new_history, stalled = _stall(obs, new_history)
    if stalled and target > current:
        target = current
        limited_by, held = (
            "workersFailing",
            f"{_plural(obs.failing, 'worker pod')} that cannot start (no scale-up until a worker starts)",
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
    if target < current:
        cut = target > recommendation
        new_history = dataclasses.replace(new_history, last_down=obs.now, down_cut=cut)
    if target > current:
        new_history = dataclasses.replace(new_history, last_up=obs.now)
    return Decision(target, reason, recommendation, new_history, limited_by)
