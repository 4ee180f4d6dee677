"""The discrete-event core: tasks wait in a broker, worker pods start, take tasks and stop, and a policy's
control loops set the replicas of the pods' Deployment, each on its own clock.

What the model keeps from the real system, and why:
- The broker is kombu's Redis layout: one list per priority step, producers LPUSH and workers BRPOP, so
  within a step the oldest task goes first, and a lower step before a higher one. A task that was running
  when its pod was killed comes back at the consuming end (kombu restores unacknowledged messages with RPUSH),
  so it is the next one taken.
- A free slot takes a task at once (prefetch 1, acks_late); the pod that has waited longest gets it, as Redis
  serves blocked BRPOP clients in order.
- The Deployment's ReplicaSet acts at once: more replicas create pods that take tasks after a start-up drawn
  for each pod (image pull and CUDA vary: lognormal around `startup_s`); fewer replicas delete pods in the
  ReplicaSet's order (see `_victim_rank`).
- Optionally the cluster has no GPU node to spare (`cold_node_s`): a pod that finds no idle node waits for a
  new one, as a cluster autoscaler adds it; a node left without a pod is removed after `node_idle_s` (the
  cluster autoscaler's scale-down-unneeded-time, 10 minutes by default).
- A deleted pod with running tasks gets a warm shutdown for `grace_s` (Celery finishes what it runs, takes
  nothing new), then is killed; a killed task loses its work and returns to the queue after `redelivery_s`.
- Each worker publishes its state to the broker as docs/worker-contract.md says: busy, and the tasks it has
  finished since it started. A policy reads those entries as the operator's HGETALL returns them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gpufleet.model import WorkerState
from gpufleet.spec import BrokerSpec
from gpufleet_tools.simulate.traces import Trace
from gpufleet_worker.contract import STATE_INTERVAL_SECONDS, STATE_TTL_INTERVALS

PRIORITY_STEPS = BrokerSpec().priority_steps  # kombu's default: lists for steps 0, 3, 6 and 9

# Events at one instant are handled in this order: slots are freed and pods get ready before tasks are
# handed out, and the policies look last, at the state the instant left.
DONE, KILL, READY, REDELIVER, ARRIVE, TICK = range(6)


@dataclass(frozen=True)
class Setup:
    """The fleet and the cluster, shared by every policy of a comparison."""

    startup_s: float = 60.0  # pod created -> worker taking tasks: GPU node, image pull, CUDA start (mean)
    # Spread of the start-up: each pod's is lognormal with mean startup_s and this sigma (0: all equal).
    startup_spread: float = 0.0
    slots: int = 1  # tasks one pod runs at once (1 for Celery's solo pool)
    gpus: int = 1  # GPUs per pod
    redelivery_s: float = 0.0  # a killed task's return to the queue (Celery+Redis: the visibility timeout)
    grace_s: float = 0.0  # a deleted pod's warm shutdown before it is killed (terminationGracePeriodSeconds)
    stall_s: float | None = None  # give up after this long with work pending and none completed, and not
    # before this long after the last arrival; None: an hour, or twice the longest task if that is longer (a
    # policy that kills tasks can kill them forever)
    cold_node_s: float = 0.0  # more start-up for a pod that finds no idle GPU node (0: there always is one)
    node_idle_s: float = 600.0  # a node without a pod is removed after this long (scale-down-unneeded-time)
    seed: int = 0  # of the start-up draws

    def draw_startup(self, rng: random.Random) -> float:
        if self.startup_spread <= 0 or self.startup_s <= 0:
            return self.startup_s
        sigma = self.startup_spread
        return rng.lognormvariate(math.log(self.startup_s) - sigma**2 / 2, sigma)

    def stall_limit(self, trace: Trace) -> float:
        return (
            self.stall_s
            if self.stall_s is not None
            else max(3600.0, 2 * max(t.service_s for t in trace.tasks))
        )


@dataclass(frozen=True)
class View:
    """What a policy can read at a tick: the broker and the Deployment."""

    queued: int  # waiting, in every priority list
    listed: int  # waiting in the queue's own list (priority step 0): what one LLEN of the queue returns
    reserved: int  # delivered and not acknowledged: running, or killed and not yet redelivered
    replicas: int  # the Deployment's spec.replicas (pods not being deleted)
    idle: int  # of those pods, the ones running nothing (pods still starting included)
    ready: int = 0  # of those pods, the ones whose worker takes tasks
    # The fleet's worker state hash, pod name -> entry: a worker writes its entry once it has started (a pod
    # still starting has none) and deletes it when it exits, so pods in a warm shutdown are still there.
    workers: Mapping[str, WorkerState] = field(default_factory=dict)
    created: Mapping[str, float] = field(default_factory=dict)  # pod name -> creation time, pods not deleted


@dataclass(frozen=True)
class Loop:
    """One control loop of a policy: every `period_s` from time 0, it reads a View and sets the replicas."""

    period_s: float
    step: Callable[[float, View], int]


class Policy(Protocol):
    name: str
    initial: int  # replicas at time 0, warm
    resting: int  # replicas it settles at when there is no work: a run ends there
    marks_deletion_cost: bool  # sets controller.kubernetes.io/pod-deletion-cost: busy pods go last
    grace_s: float | None  # a removed pod's warm shutdown when the policy sets its own; None: the Setup's
    loops: tuple[Loop, ...]  # at one instant, run in this order


@dataclass
class Run:
    """What happened to one policy on one trace."""

    policy: str
    trace: Trace
    setup: Setup
    started: list[float | None]  # per task: when the run that completed it started
    finished: list[float | None]
    completions: int = 0
    interrupted: int = 0  # runs killed in the middle
    lost_work_s: float = 0.0  # GPU seconds those runs had done
    pod_seconds: float = 0.0  # pods' lives, start-up and idle time included
    scale_events: int = 0  # changes of the Deployment's replicas
    end_s: float = 0.0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (time, queued, replicas)


@dataclass
class _Pod:
    id: int
    created: float
    ready_at: float
    ready: bool
    free_since: float
    running: dict[int, float] = field(default_factory=dict)  # task -> start of its run
    stopping: bool = False
    done: int = 0  # tasks finished since its worker started: the `done` counter it publishes
    since: float = 0.0  # when it last went from idle to busy or back: the `since` it publishes
    entry: WorkerState | None = None  # its published entry, rebuilt when one of its fields changes


class _Simulation:
    def __init__(self, trace: Trace, policy: Policy, setup: Setup) -> None:
        n = len(trace.tasks)
        self.trace, self.policy, self.setup = trace, policy, setup
        self.run = Run(policy.name, trace, setup, [None] * n, [None] * n)
        self.lists: dict[int, deque[int]] = {step: deque() for step in PRIORITY_STEPS}
        self.queued = self.running = self.awaiting = 0
        self.attempt = [0] * n  # bumped when a run is killed, so its DONE event is ignored
        self.pods: dict[int, _Pod] = {}  # live pods, stopping ones included
        self.active = 0  # of those, the ones not stopping: the Deployment's replicas
        self.pod_ids = itertools.count()
        self.events: list[tuple[float, int, int, int, object]] = []
        self.seq = itertools.count()
        self.rng = random.Random(f"startup/{setup.seed}")
        self.idle_nodes: list[float] = []  # when each idle GPU node lost its pod (only with cold_node_s)
        self.grace_s = setup.grace_s if policy.grace_s is None else policy.grace_s

    def at(self, t: float, kind: int, payload: object = None, order: int = 0) -> None:
        heapq.heappush(self.events, (t, kind, order, next(self.seq), payload))

    # ---- the broker -----------------------------------------------------------------------------------

    def _push(self, task: int, front: bool) -> None:
        step = PRIORITY_STEPS[bisect_right(PRIORITY_STEPS, self.trace.tasks[task].priority) - 1]
        (self.lists[step].appendleft if front else self.lists[step].append)(task)
        self.queued += 1

    def _pop(self) -> int:
        self.queued -= 1
        return next(lst for lst in self.lists.values() if lst).popleft()

    def _dispatch(self, now: float) -> None:
        if not self.queued:
            return
        slots = self.setup.slots
        # The free pods, the one free longest first; a pod that takes a task and still has a free slot goes
        # back in with its free_since unchanged, as the min over every free pod would pick it again.
        free = [
            (p.free_since, p.id, p)
            for p in self.pods.values()
            if p.ready and not p.stopping and len(p.running) < slots
        ]
        heapq.heapify(free)
        while self.queued and free:
            _, _, pod = free[0]
            if not pod.running:
                pod.since = now
                pod.entry = None
            task = self._pop()
            pod.running[task] = now
            pod.entry = None
            self.running += 1
            self.run.started[task] = now
            self.at(now + self.trace.tasks[task].service_s, DONE, (pod.id, task, self.attempt[task]))
            if len(pod.running) >= slots:
                heapq.heappop(free)

    # ---- pods -------------------------------------------------------------------------------------------

    def _startup(self, now: float) -> float:
        startup = self.setup.draw_startup(self.rng)
        if self.setup.cold_node_s > 0:
            kept = now - self.setup.node_idle_s
            self.idle_nodes = [t for t in self.idle_nodes if t > kept]
            if self.idle_nodes:
                self.idle_nodes.pop()  # the node freed last
            else:
                startup += self.setup.cold_node_s
        return startup

    def _create(self, now: float, warm: bool) -> None:
        pid = next(self.pod_ids)
        ready_at = now if warm else now + self._startup(now)
        self.pods[pid] = _Pod(pid, now, ready_at, warm, now, since=now)
        self.active += 1
        if not warm:
            self.at(ready_at, READY, pid)

    def _gone(self, now: float, pod: _Pod) -> None:
        del self.pods[pod.id]
        self.run.pod_seconds += now - pod.created
        if self.setup.cold_node_s > 0:
            self.idle_nodes.append(now)

    def _interrupt(self, now: float, pod: _Pod, task: int) -> None:
        self.run.lost_work_s += now - pod.running.pop(task)
        pod.entry = None
        self.running -= 1
        self.attempt[task] += 1
        self.run.interrupted += 1
        if self.setup.redelivery_s > 0:
            self.awaiting += 1
            self.at(now + self.setup.redelivery_s, REDELIVER, task)
        else:
            self._push(task, front=True)

    def _kill(self, now: float, pod: _Pod) -> None:
        for task in list(pod.running):
            self._interrupt(now, pod, task)
        self._gone(now, pod)

    def _victim_rank(self, pod: _Pod) -> tuple:
        """The ReplicaSet's order of deletion, first deleted first (kube-controller-manager's ActivePodsWithRanks,
        https://kubernetes.io/docs/concepts/workloads/controllers/replicaset/#scaling-a-replicaset): pods not
        ready before ready ones, then the lower controller.kubernetes.io/pod-deletion-cost, then the pod ready
        the shortest time, then the newest. gpufleet sets the cost from the work a pod runs; KEDA sets none,
        so it deletes the newest pods whatever they run. Kubernetes compares the times on a log scale and
        breaks ties at random; the model takes the newest exactly."""
        cost = len(pod.running) if self.policy.marks_deletion_cost else 0
        return (pod.ready, cost, -pod.ready_at, -pod.created, -pod.id)

    def _scale(self, now: float, replicas: int) -> None:
        active = [p for p in self.pods.values() if not p.stopping]
        if replicas == len(active):
            return
        self.run.scale_events += 1
        for _ in range(replicas - len(active)):
            self._create(now, warm=False)
        for pod in sorted(active, key=self._victim_rank)[: max(0, len(active) - replicas)]:
            pod.stopping = True
            self.active -= 1
            if not pod.running:
                self._gone(now, pod)
            elif self.grace_s > 0:
                self.at(now + self.grace_s, KILL, pod.id)
            else:
                self._kill(now, pod)

    def _entry(self, pod: _Pod, now: float) -> WorkerState:
        """The pod's entry in the state hash; its expiry is that of the write that last changed it (what the
        policies read does not include the expiry)."""
        if pod.entry is None:
            pod.entry = WorkerState(
                busy=bool(pod.running),
                since=pod.since,
                expires=now + STATE_TTL_INTERVALS * STATE_INTERVAL_SECONDS,
                active=len(pod.running),
                done=pod.done,
            )
        return pod.entry

    def view(self, now: float) -> View:
        active = [p for p in self.pods.values() if not p.stopping]
        return View(
            queued=self.queued,
            listed=len(self.lists[PRIORITY_STEPS[0]]),
            reserved=self.running + self.awaiting,
            replicas=len(active),
            idle=sum(1 for p in active if not p.running),
            ready=sum(1 for p in active if p.ready),
            workers={f"pod-{p.id}": self._entry(p, now) for p in self.pods.values() if p.ready},
            created={f"pod-{p.id}": p.created for p in active},
        )

    # ---- the clock --------------------------------------------------------------------------------------

    def handle(self, now: float, kind: int, payload: object) -> None:
        if kind == DONE:
            pid, task, attempt = payload
            if attempt != self.attempt[task]:
                return  # that run was killed
            pod = self.pods[pid]
            del pod.running[task]
            self.running -= 1
            pod.free_since = now
            pod.done += 1
            pod.entry = None
            if not pod.running:
                pod.since = now
            self.run.finished[task] = now
            self.run.completions += 1
            if pod.stopping and not pod.running:
                self._gone(now, pod)
        elif kind == KILL:
            if (pod := self.pods.get(payload)) is not None:
                self._kill(now, pod)
        elif kind == READY:
            if (pod := self.pods.get(payload)) is not None:
                pod.ready, pod.free_since, pod.since, pod.entry = True, now, now, None
        elif kind == REDELIVER:
            self.awaiting -= 1
            self._push(payload, front=True)
        elif kind == ARRIVE:
            self._push(payload, front=False)
        else:
            index, count = payload
            loop = self.policy.loops[index]
            self._scale(now, loop.step(now, self.view(now)))
            self.at((count + 1) * loop.period_s, TICK, (index, count + 1), order=index)
        self._dispatch(now)

    def simulate(self) -> Run:
        tasks, run = self.trace.tasks, self.run
        for i, task in enumerate(tasks):
            self.at(task.arrival_s, ARRIVE, i)
        for i in range(len(self.policy.loops)):
            self.at(0.0, TICK, (i, 0), order=i)
        for _ in range(self.policy.initial):
            self._create(0.0, warm=True)
        stall = self.setup.stall_limit(self.trace)
        # progress: the last completion, or, while tasks remain, the last instant with none pending. Once all
        # are done it stays at the last completion: a fleet that never comes back to rest is billed to then.
        # A stalled run gives up no sooner than the stall limit after the last arrival: every task gets that
        # long to be run (one that arrived after the run ended would otherwise count a negative wait).
        now = progress = 0.0
        last = max((task.arrival_s for task in tasks), default=0.0)
        run.timeline.append((now, 0, self.policy.initial))
        while self.events and self.events[0][0] <= max(progress, last) + stall:
            now, kind, _, _, payload = heapq.heappop(self.events)
            done = run.completions
            self.handle(now, kind, payload)
            pending = self.queued or self.running or self.awaiting
            if run.completions > done or (run.completions < len(tasks) and not pending):
                progress = now
            replicas = self._record(now)
            if run.completions == len(tasks) and replicas == len(self.pods) == self.policy.resting:
                break
        else:
            # Gave up (or nothing more can happen with tasks left): what is alive is billed to then.
            now = max(progress, last) + stall if self.events or run.completions < len(tasks) else now
        run.end_s = now
        self._record(now, always=True)
        for pod in list(self.pods.values()):
            self._gone(now, pod)
        return run

    def _record(self, now: float, always: bool = False) -> int:
        """Add a point to the timeline when the queue or the replicas changed: one point per instant."""
        timeline = self.run.timeline
        replicas = self.active
        if always or timeline[-1][1:] != (self.queued, replicas):
            if timeline[-1][0] == now:
                timeline.pop()
            timeline.append((now, self.queued, replicas))
        return replicas


def simulate(trace: Trace, policy: Policy, setup: Setup = Setup()) -> Run:
    """Run one policy over one trace, from time 0 until every task is done and the fleet is back at rest, or
    until it stalls (see `Setup.stall_s`)."""
    return _Simulation(trace, policy, setup).simulate()
