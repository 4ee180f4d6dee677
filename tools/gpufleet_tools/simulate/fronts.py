"""Trade-off curves, not points: each system swept over its own knob on one trace, and how the curves compare.

gpufleet over targetWaitSeconds, KEDA over listLength and cooldownPeriod, Ray Serve over
target_ongoing_requests; each point is (GPU-hours, p95 wait). A task a run leaves unfinished (KEDA and Ray Serve
see only the queue's own list, so a task in a lower priority list can wait for ever once that list is empty)
counts as waiting until the run ends, and its service time is billed as if it had run, on the GPUs of one slot:
the least that running it would have cost. So a policy can shorten neither its p95 (beyond the 5 % of tasks a
p95 leaves out) nor its GPU-hours by never running some tasks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gpufleet_tools.simulate.engine import Policy, Run, simulate
from gpufleet_tools.simulate.families import FAMILIES, family, family_setup
from gpufleet_tools.simulate.policies import (
    Gpufleet,
    Keda,
    KedaSettings,
    RayServe,
    RaySettings,
    gpufleet_spec,
)

SIZES = (10, 40, 80)
TARGETS = (30, 45, 60, 90, 120, 180, 240, 360, 480, 720, 960)  # gpufleet's targetWaitSeconds; None: default
LIST_LENGTHS = tuple(range(1, 21))
COOLDOWNS = (60, 300)
RAY_TARGETS = (1, 2, 4)
GPU_SLACK = 1.02  # a point matches another within 2 % of its GPU-hours...
WAIT_SLACK_S = 1.0  # ...and 1 s of its p95 wait


@dataclass(frozen=True)
class Point:
    system: str  # gpufleet, keda, ray-serve
    knob: str  # the setting, e.g. "targetWaitSeconds=60", "listLength=5 cooldown=300"
    gpu_hours: float
    p95_s: float
    interrupted: int
    scale_events: int
    unfinished: int

    @property
    def default(self) -> bool:
        return self.knob == "default"


def _p95(run: Run) -> float:
    end = run.end_s
    waits = [
        (s if f is not None else end) - t.arrival_s
        for t, s, f in zip(run.trace.tasks, run.started, run.finished, strict=True)
    ]
    return float(np.percentile(waits, 95))


def _point(system: str, knob: str, run: Run) -> Point:
    undone = [t.service_s for t, f in zip(run.trace.tasks, run.finished, strict=True) if f is None]
    slot_seconds = run.pod_seconds * run.setup.slots + sum(undone)
    return Point(
        system,
        knob,
        round(slot_seconds * run.setup.gpus / run.setup.slots / 3600, 3),
        round(_p95(run), 1),
        run.interrupted,
        run.scale_events,
        len(undone),
    )


def systems(size: int) -> list[tuple[str, str, callable]]:
    """(system, knob, fresh policy) for every point of every system's grid at this maxReplicas."""
    out = []
    for target in (None, *TARGETS):
        fields = {"maxReplicas": str(size)}
        if target is not None:
            fields["targetWaitSeconds"] = str(target)
        spec = gpufleet_spec(fields)
        knob = "default" if target is None else f"targetWaitSeconds={target}"
        out.append(("gpufleet", knob, lambda spec=spec: Gpufleet(spec)))
    for cooldown in COOLDOWNS:
        for length in LIST_LENGTHS:
            s = KedaSettings(cooldown_s=cooldown, list_length=length, max_replica_count=size)
            out.append(("keda", f"listLength={length} cooldown={cooldown}", lambda s=s: Keda(s)))
    for target in RAY_TARGETS:
        r = RaySettings(target_ongoing_requests=target, max_replicas=size)
        out.append(("ray-serve", f"target={target}", lambda r=r: RayServe(r)))
    return out


def sweep(name: str, seed: int, size: int, only: Iterable[str] | None = None) -> list[Point]:
    """Every point of every system's grid on one trace of a family, at one maxReplicas."""
    trace, setup = family(name, seed, size), family_setup(name, seed)
    points = []
    for system, knob, make in systems(size):
        if only is not None and system not in only:
            continue
        policy: Policy = make()
        points.append(_point(system, knob, simulate(trace, policy, setup)))
    return points


def _reaches(g: Point, r: Point) -> bool:
    """g is as good as r: GPU-hours within GPU_SLACK of r's and p95 within WAIT_SLACK_S."""
    return g.gpu_hours <= r.gpu_hours * GPU_SLACK and g.p95_s <= r.p95_s + WAIT_SLACK_S


def _dominates(r: Point, g: Point) -> bool:
    """r is better than g in one figure beyond the slack and no worse in the other."""
    no_worse = r.gpu_hours <= g.gpu_hours and r.p95_s <= g.p95_s
    return no_worse and (r.gpu_hours * GPU_SLACK < g.gpu_hours or r.p95_s + WAIT_SLACK_S < g.p95_s)


@dataclass(frozen=True)
class Verdict:
    """How gpufleet's curve fared on one trace and size."""

    trace: str
    size: int
    curve: bool  # some gpufleet point reaches every rival point
    default: bool  # no rival point dominates gpufleet's default
    monotone: bool  # a lower targetWaitSeconds never gave a higher p95 (beyond the slack)
    lowest: bool  # gpufleet's lowest p95 is as low as any rival's
    calmer: bool  # at each KEDA point's p95, a gpufleet point makes no more scale events
    interrupted: int  # tasks gpufleet's points interrupted, all settings together
    worst: str  # the rival point furthest out of gpufleet's reach, and by how much ("" if none)
    gap: float  # that distance: extra GPU-hours share, or seconds of p95 beyond reach (0 if none)

    def row(self) -> str:
        yes = {True: "yes", False: "no"}
        return (
            f"| {self.trace} | {self.size} | {yes[self.curve]} | {yes[self.default]} | {yes[self.monotone]} | "
            f"{yes[self.lowest]} | {yes[self.calmer]} | {self.interrupted} |"
        )


def _gap(r: Point, ours: Sequence[Point]) -> tuple[float, str]:
    """How far gpufleet's curve is from reaching r: where some point reaches r's p95, the GPU-hours share it
    needs beyond the slack; where none does, 1 + the seconds of p95 it misses by (so those rank worse)."""
    fast = [g for g in ours if g.p95_s <= r.p95_s + WAIT_SLACK_S]
    if fast:
        best = min(fast, key=lambda g: g.gpu_hours)
        gap = max(0.0, best.gpu_hours / (r.gpu_hours * GPU_SLACK) - 1)
        return gap, f"{best.knob}: {best.gpu_hours:.2f} GPU-h at p95 {best.p95_s:.0f} s"
    best = min(ours, key=lambda g: g.p95_s)
    return (
        1 + best.p95_s - r.p95_s,
        f"lowest p95 {best.p95_s:.0f} s ({best.knob}, {best.gpu_hours:.2f} GPU-h)",
    )


def judge(trace: str, size: int, points: Sequence[Point]) -> Verdict:
    ours = [p for p in points if p.system == "gpufleet"]
    rivals = [p for p in points if p.system != "gpufleet"]
    default = next(p for p in ours if p.default)
    swept = sorted((p for p in ours if not p.default), key=lambda p: -int(p.knob.split("=")[1]))
    monotone = all(b.p95_s <= a.p95_s + WAIT_SLACK_S for a, b in zip(swept, swept[1:], strict=False))
    lowest = min(p.p95_s for p in ours) <= min(r.p95_s for r in rivals) + WAIT_SLACK_S
    calmer = True
    for k in (r for r in rivals if r.system == "keda"):
        fast = [g for g in ours if g.p95_s <= k.p95_s + WAIT_SLACK_S]
        if not fast or min(g.scale_events for g in fast) > k.scale_events:
            calmer = False
    misses = [(r, *_gap(r, ours)) for r in rivals if not any(_reaches(g, r) for g in ours)]
    worst, gap = "", 0.0
    if misses:
        r, gap, answer = max(misses, key=lambda m: m[1])
        worst = (
            f"{r.system} {r.knob}: {r.gpu_hours:.2f} GPU-h at p95 {r.p95_s:.0f} s; gpufleet's best: {answer}"
        )
    return Verdict(
        trace,
        size,
        curve=not misses,
        default=not any(_dominates(r, default) for r in rivals),
        monotone=monotone,
        lowest=lowest,
        calmer=calmer,
        interrupted=sum(p.interrupted for p in ours),
        worst=worst,
        gap=round(gap, 3),
    )


HEADER = (
    "| trace | maxReplicas | curve matches every rival | default undominated | lower target, lower p95 "
    "| lowest p95 reached | scale events <= KEDA's | interrupted |\n| --- | ---: | --- | --- | --- | --- | --- | ---: |"
)


def listing(verdicts: Sequence[Verdict]) -> str:
    """One row per trace and size: what `summary` adds up."""
    return "\n".join([HEADER, *(v.row() for v in verdicts)])


def parse_listing(text: str) -> list[Verdict]:
    out = []
    for line in text.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        trace, size, *flags, interrupted = cells
        curve, default, monotone, lowest, calmer = (f == "yes" for f in flags)
        out.append(
            Verdict(trace, int(size), curve, default, monotone, lowest, calmer, int(interrupted), "", 0)
        )
    return out


def _family(trace: str) -> str:
    return trace.rsplit("-", 1)[0]


def _share(flags: Sequence[bool]) -> str:
    return f"{sum(flags) / len(flags):.0%}" if flags else "-"


def summary(verdicts: Sequence[Verdict]) -> str:
    """Per family and size: the share of traces where each goal held, and the tasks interrupted."""
    lines = [
        "| family | maxReplicas | traces | curve matches every rival | default undominated "
        "| lower target, lower p95 | lowest p95 reached | scale events <= KEDA's | interrupted |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    sizes = sorted({v.size for v in verdicts})
    names = [f for f in FAMILIES if any(_family(v.trace) == f for v in verdicts)]
    groups: list[tuple[str, int, list[Verdict]]] = []
    for size in sizes:
        for name in names:
            groups.append((name, size, [v for v in verdicts if v.size == size and _family(v.trace) == name]))
        groups.append(("all", size, [v for v in verdicts if v.size == size]))
    for name, size, vs in groups:
        if not vs:
            continue
        bold = "**" if name == "all" else ""
        lines.append(
            f"| {bold}{name}{bold} | {size} | {len(vs)} | {_share([v.curve for v in vs])} "
            f"| {_share([v.default for v in vs])} | {_share([v.monotone for v in vs])} "
            f"| {_share([v.lowest for v in vs])} | {_share([v.calmer for v in vs])} "
            f"| {sum(v.interrupted for v in vs)} |"
        )
    return "\n".join(lines)


def worst(verdicts: Sequence[Verdict], n: int = 5) -> list[Verdict]:
    return sorted((v for v in verdicts if v.worst), key=lambda v: -v.gap)[:n]


def as_dict(points: Sequence[Point]) -> list[dict]:
    return [dataclasses.asdict(p) for p in points]


def from_dicts(rows: Sequence[Mapping]) -> list[Point]:
    return [Point(**row) for row in rows]


def plot(fronts: Mapping[str, Sequence[Point]], path, size: int) -> None:
    """One panel per trace: GPU-hours against p95 wait, gpufleet's curve against the rivals' points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(fronts)
    cols = 4
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (trace, points) in zip(axes.flat, fronts.items(), strict=False):
        ours = sorted((p for p in points if p.system == "gpufleet" and not p.default), key=lambda p: p.p95_s)
        default = next(p for p in points if p.system == "gpufleet" and p.default)
        for cooldown, marker in zip(COOLDOWNS, ("o", "s"), strict=True):
            keda = [p for p in points if p.system == "keda" and p.knob.endswith(f"cooldown={cooldown}")]
            ax.scatter(
                [p.p95_s for p in keda],
                [p.gpu_hours for p in keda],
                s=14,
                marker=marker,
                color="tab:orange",
                alpha=0.7,
                label=f"KEDA listLength 1-20, cooldown {cooldown}",
            )
        ray = [p for p in points if p.system == "ray-serve"]
        ax.scatter(
            [p.p95_s for p in ray], [p.gpu_hours for p in ray], s=22, marker="^", color="tab:green",
            label="Ray Serve target 1/2/4",
        )  # fmt: skip
        ax.plot(
            [p.p95_s for p in ours], [p.gpu_hours for p in ours], "-o", ms=4, color="tab:blue",
            label="gpufleet targetWaitSeconds 30-960",
        )  # fmt: skip
        ax.scatter(
            [default.p95_s], [default.gpu_hours], s=90, marker="*", color="tab:blue", zorder=5,
            label="gpufleet default",
        )  # fmt: skip
        ax.set_title(trace, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("p95 wait (s)", fontsize=8)
        ax.set_ylabel("GPU-hours", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(f"GPU-hours against p95 wait, maxReplicas {size}: one trace of each family", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=80)
    plt.close(fig)
