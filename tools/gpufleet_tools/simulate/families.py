"""Trace families: workloads drawn from a family's parameters by a seed, sized to the fleet they run on.

A family draws its own parameters (how long tasks run, how loaded the fleet is, the shape of the load) from
the seed, then the tasks. The load is given as a share of the fleet's capacity (maxReplicas x slots busy
slots): 0.05 to 1.5 (rare: below 0.05). Service times run from 0.1 s to an hour; a trace keeps to about
MAX_TASKS tasks by raising its mean service time where a short one would need more (the simulator's cost is
per task), so the shortest tasks come from the heavy-tailed families' spread.

Each trace comes with the cluster it runs on (`family_setup`): pods start in 20 s to 3 minutes, a start-up drawn
per trace, plus minutes more for a pod that finds no warm GPU node.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from gpufleet_tools.simulate.engine import Setup
from gpufleet_tools.simulate.traces import Task, Trace

MAX_TASKS = 12_000
SHORTEST_S, LONGEST_S = 0.1, 3600.0
HOUR = 3600.0


def _clip(s: float) -> float:
    return min(max(s, SHORTEST_S), LONGEST_S)


@dataclass(frozen=True)
class _Service:
    """Service times: lognormal or Pareto of a given mean, clipped to [0.1 s, 1 h]."""

    mean: float
    sigma: float = 0.5  # lognormal spread
    pareto: float | None = None  # the Pareto shape (alpha > 1), instead of a lognormal

    def draw(self, rng: random.Random) -> float:
        if self.pareto is not None:
            a = self.pareto
            return _clip(self.mean * (a - 1) / a * rng.paretovariate(a))
        return _clip(rng.lognormvariate(math.log(self.mean) - self.sigma**2 / 2, self.sigma))

    def describe(self) -> str:
        shape = f"Pareto alpha {self.pareto:.2g}" if self.pareto else f"lognormal sigma {self.sigma:.2g}"
        return f"service mean {self.mean:.3g} s ({shape})"


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _mean_for(rng: random.Random, low: float, high: float, load: float, capacity: int, span: float) -> float:
    """A mean service time drawn log-uniformly in [low, high], raised where the trace would exceed MAX_TASKS."""
    return min(max(_log_uniform(rng, low, high), load * capacity * span / MAX_TASKS), LONGEST_S)


def _poisson(
    rng: random.Random, rate: Callable[[float], float], peak: float, start: float, end: float
) -> list[float]:
    """Arrival times of a Poisson process of rate rate(t) <= peak on [start, end), by thinning."""
    out, t = [], start
    if peak <= 0:
        return out
    while (t := t + rng.expovariate(peak)) < end:
        if rng.random() * peak < rate(t):
            out.append(t)
    return out


def poisson(rng: random.Random, capacity: int) -> tuple[list[Task], str]:
    span = 2 * HOUR
    load = rng.uniform(0.05, 1.5)
    service = _Service(_mean_for(rng, 2, 300, load, capacity, span), rng.uniform(0.2, 1.0))
    base = load * capacity / service.mean
    if rng.random() < 0.5:  # an hourly rate: each hour's level drawn around the mean
        levels = [rng.uniform(0.3, 1.7) for _ in range(int(span // HOUR) + 1)]
        shape = "hourly rate"

        def rate(t: float) -> float:
            return base * levels[int(t // HOUR)]

        peak = base * max(levels)
    else:  # two hours of a daily cosine, from a random hour of the day
        phase, depth = rng.uniform(0, 24 * HOUR), rng.uniform(0.3, 0.9)
        shape = f"daily rate from hour {phase / HOUR:.0f}"

        def rate(t: float) -> float:
            return base * (1 - depth * math.cos(2 * math.pi * (t + phase) / (24 * HOUR)))

        peak = base * (1 + depth)
    tasks = [Task(t, service.draw(rng)) for t in _poisson(rng, rate, peak, 0, span)]
    return tasks, f"Poisson, {shape}, load {load:.2f}, {service.describe()}"


def bursts(rng: random.Random, capacity: int) -> tuple[list[Task], str]:
    span = 2 * HOUR
    load = rng.uniform(0.05, 1.5)
    service = _Service(_mean_for(rng, 2, 300, load, capacity, span), rng.uniform(0.2, 0.8))
    n = rng.randint(3, 12)
    within = rng.choice([0.0, rng.uniform(5, 300)])  # a batch submitted at once, or a burst over minutes
    total = load * capacity * span / service.mean
    weights = [rng.uniform(0.2, 1.0) for _ in range(n)]
    tasks = []
    for w in weights:
        at = rng.uniform(0, span - within)
        size = max(1, round(total * w / sum(weights)))
        tasks += [Task(at + rng.uniform(0, within), service.draw(rng)) for _ in range(size)]
    return tasks, f"{n} bursts within {within:.0f} s at random times, load {load:.2f}, {service.describe()}"


def waves(rng: random.Random, capacity: int) -> tuple[list[Task], str]:
    span = 2 * HOUR
    period, on = rng.uniform(10, 60) * 60, rng.uniform(0.2, 0.6)
    load = rng.uniform(0.05, 1.5)  # while the wave is on
    service = _Service(_mean_for(rng, 2, 120, load * on, capacity, span), rng.uniform(0.2, 0.8))
    level = load * capacity / service.mean
    offset = rng.uniform(0, period)

    def rate(t: float) -> float:
        return level if (t + offset) % period < on * period else 0.0

    tasks = [Task(t, service.draw(rng)) for t in _poisson(rng, rate, level, 0, span)]
    return tasks, (
        f"square waves: {on * period / 60:.0f} min on every {period / 60:.0f} min, load {load:.2f} while on, "
        f"{service.describe()}"
    )


def heavy_tail(rng: random.Random, capacity: int) -> tuple[list[Task], str]:
    span = 2 * HOUR
    load = rng.uniform(0.05, 1.5)
    mean = _mean_for(rng, 5, 300, load, capacity, span)
    service = (
        _Service(mean, pareto=rng.uniform(1.3, 2.5))
        if rng.random() < 0.5
        else _Service(mean, sigma=rng.uniform(1.2, 2.2))
    )
    rate = load * capacity / service.mean
    tasks = [Task(t, service.draw(rng)) for t in _poisson(rng, lambda t: rate, rate, 0, span)]
    return tasks, f"Poisson, heavy-tailed service, load {load:.2f}, {service.describe()}"


def priorities(rng: random.Random, capacity: int) -> tuple[list[Task], str]:
    """Short interactive tasks at priority 0 under batches of longer ones at priority 6 or 9."""
    span = 2 * HOUR
    load = rng.uniform(0.05, 1.5)
    share = rng.uniform(0.2, 0.8)  # of the load, the interactive part
    quick = _Service(_mean_for(rng, 1, 60, load * share, capacity, span), rng.uniform(0.2, 0.8))
    slow = _Service(_mean_for(rng, 60, 900, load, capacity, span), rng.uniform(0.2, 0.8))
    rate = load * share * capacity / quick.mean
    tasks = [Task(t, quick.draw(rng)) for t in _poisson(rng, lambda t: rate, rate, 0, span)]
    n = rng.randint(2, 8)
    per = max(1, round(load * (1 - share) * capacity * span / slow.mean / n))
    for _ in range(n):
        at, step = rng.uniform(0, span), rng.choice([6, 9])
        tasks += [Task(at + rng.uniform(0, 60), slow.draw(rng), step) for _ in range(per)]
    return tasks, (
        f"mixed priorities, load {load:.2f}: {share:.0%} at priority 0 ({quick.describe()}), "
        f"{n} batches at 6 or 9 ({slow.describe()})"
    )


def long_tasks(rng: random.Random, capacity: int) -> tuple[list[Task], str]:
    span = 3 * HOUR
    load = rng.uniform(0.05, 1.5)
    service = _Service(_log_uniform(rng, 300, 2400), rng.uniform(0.2, 0.7))
    rate = load * capacity / service.mean
    tasks = [Task(t, service.draw(rng)) for t in _poisson(rng, lambda t: rate, rate, 0, span)]
    return tasks, f"long tasks: Poisson, load {load:.2f}, {service.describe()}"


def ramp(rng: random.Random, capacity: int) -> tuple[list[Task], str]:
    span = 2 * HOUR
    low, high = rng.uniform(0.05, 0.3), rng.uniform(0.5, 1.5)
    service = _Service(_mean_for(rng, 2, 300, high, capacity, span), rng.uniform(0.2, 0.8))
    down = rng.random() < 0.5  # up, then back down

    def share(t: float) -> float:
        x = t / span
        x = 1 - abs(2 * x - 1) if down else x
        return low + (high - low) * x

    peak = high * capacity / service.mean
    tasks = [
        Task(t, service.draw(rng))
        for t in _poisson(rng, lambda t: share(t) * capacity / service.mean, peak, 0, span)
    ]
    how = "up and down" if down else "up"
    return tasks, f"a slow ramp {how}, load {low:.2f} to {high:.2f}, {service.describe()}"


def rare(rng: random.Random, capacity: int) -> tuple[list[Task], str]:
    span = 3 * HOUR
    gap = rng.uniform(5, 45) * 60
    service = _Service(_log_uniform(rng, 1, 600), rng.uniform(0.2, 1.0))
    most = max(1, round(capacity * rng.uniform(0.05, 0.5)))
    tasks, t = [], 0.0
    while (t := t + rng.expovariate(1 / gap)) < span:
        tasks += [Task(t + rng.uniform(0, 10), service.draw(rng)) for _ in range(rng.randint(1, most))]
    if not tasks:
        tasks = [Task(rng.uniform(0, span), service.draw(rng))]
    return tasks, f"rare tasks: 1 to {most} every {gap / 60:.0f} min on average, {service.describe()}"


FAMILIES: dict[str, Callable[[random.Random, int], tuple[list[Task], str]]] = {
    "poisson": poisson,
    "bursts": bursts,
    "waves": waves,
    "heavy-tail": heavy_tail,
    "priorities": priorities,
    "long-tasks": long_tasks,
    "ramp": ramp,
    "rare": rare,
}


def family(name: str, seed: int, capacity: int) -> Trace:
    """The trace of one family and seed, for a fleet of `capacity` slots (maxReplicas x slots)."""
    tasks, about = FAMILIES[name](random.Random(f"family/{name}/{seed}/{capacity}"), capacity)
    tasks = sorted(tasks, key=lambda task: task.arrival_s)
    return Trace(f"{name}-{seed}", tuple(tasks), about)


def family_setup(name: str, seed: int, **fields) -> Setup:
    """The cluster a family's trace runs on: a mean start-up of 20 to 60 s on a warm node (spread 0.3), and
    30 to 120 s more for a pod that finds no idle GPU node (a cluster autoscaler adds one; an idle node goes
    after 10 minutes). So pods start in 20 s to 3 minutes, some warm, some cold."""
    rng = random.Random(f"setup/{name}/{seed}")
    return Setup(
        startup_s=round(rng.uniform(20, 60), 1),
        startup_spread=0.3,
        cold_node_s=round(rng.uniform(30, 120), 1),
        seed=seed,
        **fields,
    )
