"""Task traces: the built-in workloads, and the reader of users' own CSV files.

Every built-in trace is generated from a seed, so a seed gives the same tasks on every machine.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Task:
    arrival_s: float
    service_s: float  # GPU time the task needs once a worker runs it
    priority: int = 0  # Celery's priority on Redis: 0 to 9, 0 served first


@dataclass(frozen=True)
class Trace:
    name: str
    tasks: tuple[Task, ...]  # in order of arrival
    about: str = ""


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file and the line."""


def _lognormal(rng: random.Random, mean: float, sigma: float) -> float:
    # Parameterised by its mean, so the trace's documented mean is the mean it has.
    return rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)


def night_batch(rng: random.Random) -> list[Task]:
    """A nightly feature extraction over 30 million records, cut into 1,500 shards of 20,000 records: one
    producer submits every shard within 2 minutes from t=10 s; a shard takes 24 s on a GPU on average
    (lognormal, sigma 0.25). At 10 workers it is an hour of work, released all at once."""
    return [Task(10 + rng.uniform(0, 120), _lognormal(rng, 24, 0.25)) for _ in range(1500)]


def diurnal(rng: random.Random) -> list[Task]:
    """A day of online inference: Poisson arrivals whose rate follows a cosine from 0.01 tasks/s at 04:00 to
    0.3 tasks/s at 16:00; a task takes 15 s on average (lognormal, sigma 0.5). About 13,000 tasks, 4.5 busy
    workers at the peak."""
    low, high, day = 0.01, 0.3, 86400.0

    def rate(t: float) -> float:
        return low + (high - low) * (1 - math.cos(2 * math.pi * (t - 4 * 3600) / day)) / 2

    tasks, t = [], 0.0
    while True:  # thinning: draw at the peak rate, keep each arrival with probability rate(t) / peak
        t += rng.expovariate(high)
        if t >= day:
            return tasks
        if rng.random() < rate(t) / high:
            tasks.append(Task(t, _lognormal(rng, 15, 0.5)))


def spiky(rng: random.Random) -> list[Task]:
    """Bursts with idle gaps: 12 bursts of 10 to 80 tasks (uniform), each burst submitted within 20 s, the
    gaps between bursts 2 to 40 minutes (uniform), so some are shorter than a 5-minute cooldown and some
    longer; a task takes 20 s on average (lognormal, sigma 0.3)."""
    tasks, start = [], 30.0
    for _ in range(12):
        tasks += [
            Task(start + rng.uniform(0, 20), _lognormal(rng, 20, 0.3)) for _ in range(rng.randint(10, 80))
        ]
        start += rng.uniform(120, 2400)
    return tasks


def long_tasks(rng: random.Random) -> list[Task]:
    """Tasks of minutes (video transcoding, batch fine-tuning steps): Poisson arrivals, one every 2 minutes
    on average for 3 hours, each taking 3 to 12 minutes (uniform). About 90 tasks, 3.75 busy workers."""
    tasks, t = [], 0.0
    while (t := t + rng.expovariate(1 / 120)) < 3 * 3600:
        tasks.append(Task(t, rng.uniform(180, 720)))
    return tasks


BUILT_IN: dict[str, Callable[[random.Random], list[Task]]] = {
    "night-batch": night_batch,
    "diurnal": diurnal,
    "spiky": spiky,
    "long-tasks": long_tasks,
}


def built_in(name: str, seed: int = 0) -> Trace:
    make = BUILT_IN[name]
    tasks = sorted(make(random.Random(f"{name}/{seed}")), key=lambda task: task.arrival_s)
    return Trace(name, tuple(tasks), " ".join(make.__doc__.split()))


COLUMNS = ("arrival_s", "service_s", "priority")
REQUIRED = COLUMNS[:2]


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{path}:{line}: {column} is not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{path}:{line}: {column} must be a finite number >= 0, not {text!r}")
    return value


def _priority(path: Path, line: int, text: str) -> int:
    if not text.strip():
        return 0
    try:
        value = int(text)
    except ValueError:
        raise TraceError(f"{path}:{line}: priority is not an integer: {text!r}") from None
    if not 0 <= value <= 9:
        raise TraceError(f"{path}:{line}: priority must be 0 to 9 (Celery on Redis), not {value}")
    return value


def read_csv(path: Path) -> Trace:
    """A trace from a CSV file with a header naming `arrival_s,service_s` and, optionally, `priority`.

    Rows may come in any order (they are sorted by arrival); blank lines are skipped; any other problem is a
    TraceError naming the line.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None:
                raise TraceError(f"{path}: empty file; expected a header: {','.join(REQUIRED)}[,priority]")
            header = [h.strip() for h in header]
            unknown = [h for h in header if h not in COLUMNS]
            if unknown:
                raise TraceError(
                    f"{path}:1: unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}"
                )
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise TraceError(
                    f"{path}:1: missing column {missing[0]!r}; the header must name {', '.join(REQUIRED)}"
                )
            if len(set(header)) != len(header):
                raise TraceError(f"{path}:1: a column is named twice")
            tasks = []
            for row in rows:
                if not any(cell.strip() for cell in row):
                    continue
                line = rows.line_num
                if len(row) != len(header):
                    raise TraceError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                cell = dict(zip(header, row, strict=True))
                tasks.append(
                    Task(
                        _number(path, line, "arrival_s", cell["arrival_s"]),
                        _number(path, line, "service_s", cell["service_s"]),
                        _priority(path, line, cell.get("priority", "")),
                    )
                )
    except OSError as exc:
        raise TraceError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise TraceError(f"{path}:{rows.line_num}: {exc}") from None
    if not tasks:
        raise TraceError(f"{path}: no tasks after the header")
    return Trace(path.name, tuple(sorted(tasks, key=lambda task: task.arrival_s)), f"from {path}")


def load(ref: str, seed: int = 0) -> Trace:
    """A built-in trace by name, or a CSV file by path."""
    return built_in(ref, seed) if ref in BUILT_IN else read_csv(Path(ref))
