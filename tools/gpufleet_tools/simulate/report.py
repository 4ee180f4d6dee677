"""The simulator's output: a terminal table, a PNG timeline, and one JSON object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpufleet_tools.simulate.engine import Run
from gpufleet_tools.simulate.metrics import summarize
from gpufleet_tools.simulate.traces import Trace


def figures(runs: Sequence[Run]) -> dict[str, Any]:
    """{"policies": {name: figures}} for one trace, in the runs' order."""
    return {"policies": {run.policy: summarize(run) for run in runs}}


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _clock(x: float | None) -> str:
    if x is None:
        return "never"
    s = round(x)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def table(runs: Sequence[Run], settings: Mapping[str, Any]):
    """A rich Table: one row per policy."""
    from rich.table import Table

    trace = runs[0].trace
    floor = summarize(runs[0])["floor_gpu_hours"]
    caption = f"{trace.about}\n" + ", ".join(f"{k} {_setting(v)}" for k, v in settings.items())
    title = f"{trace.name}: {len(trace.tasks):,} tasks, floor {floor:,.2f} GPU-h (the tasks' own GPU time)"
    out = Table(title=title, caption=caption, caption_justify="left")
    out.add_column("policy", no_wrap=True)
    for name in (
        "GPU-h",
        "x floor",
        "busy",
        "wait p50 s",
        "p95 s",
        "p99 s",
        "interrupted",
        "scale events (/h)",
    ):
        out.add_column(name, justify="right", no_wrap=True)
    out.add_column("drain h:m:s", justify="right", no_wrap=True)
    out.add_column("unfinished", justify="right", no_wrap=True)
    for run in runs:
        f = summarize(run)
        out.add_row(
            run.policy,
            f"{f['gpu_hours']:,.2f}",
            _ratio(f["gpu_hours"], f["floor_gpu_hours"]),
            _share(f["busy_share"]),
            _seconds(f["wait_p50_s"]),
            _seconds(f["wait_p95_s"]),
            _seconds(f["wait_p99_s"]),
            f"{f['interrupted']:,}",
            f"{f['scale_events']:,} ({f['scale_events_per_hour']:,.1f})",
            _clock(f["drain_s"]),
            f"{f['unfinished']:,}",
        )
    return out


def markdown(rows: Sequence[tuple[int, Sequence[Run]]]) -> str:
    """One Markdown table of runs at several fleet sizes: (maxReplicas, the runs of one trace) per row group."""
    head = (
        "| trace (floor GPU-h) | maxReplicas | policy | GPU-h | x floor | busy | wait p50 s | p95 s "
        "| interrupted | scale events (/h) | drain |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for size, runs in rows:
        for i, run in enumerate(runs):
            f = summarize(run)
            trace = f"{run.trace.name} ({f['floor_gpu_hours']:,.2f})" if i == 0 else ""
            drain = _clock(f["drain_s"]) if not f["unfinished"] else f"never ({f['unfinished']:,} unfinished)"
            lines.append(
                f"| {trace} | {size if i == 0 else ''} | {run.policy} | {f['gpu_hours']:,.2f} "
                f"| {_ratio(f['gpu_hours'], f['floor_gpu_hours'])} | {_share(f['busy_share'])} "
                f"| {_seconds(f['wait_p50_s'])} | {_seconds(f['wait_p95_s'])} | {f['interrupted']:,} "
                f"| {f['scale_events']:,} ({f['scale_events_per_hour']:,.1f}) | {drain} |"
            )
    return "\n".join(lines)


def _setting(v: Any) -> str:
    return "auto" if v is None else f"{v:g}" if isinstance(v, int | float) else str(v)


def _ratio(x: float, floor: float) -> str:
    return f"{x / floor:.2f}" if floor else "-"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def load(trace: Trace, span: float, step: float) -> list[float]:
    """The trace's load: GPU slots its tasks would keep busy if each started on arrival (their service times
    laid over their arrivals), averaged over each `step` seconds: what a fleet must carry, whatever its policy."""
    bins = [0.0] * (int(span // step) + 1)
    for task in trace.tasks:
        start, end = task.arrival_s, task.arrival_s + task.service_s
        while start < end and int(start // step) < len(bins):
            edge = min(end, (int(start // step) + 1) * step)
            bins[int(start // step)] += (edge - start) / step
            start = edge
    return bins


def _means(timeline: Sequence[tuple[float, int, int]], index: int, span: float, step: float) -> list[float]:
    """The time-weighted mean of one column of a run's timeline (1: queued, 2: replicas) over each `step`."""
    bins = [0.0] * (int(span // step) + 1)
    ends = [t for t, _, _ in timeline[1:]] + [span]
    for (start, *values), end in zip(timeline, ends, strict=True):
        while start < end and int(start // step) < len(bins):
            edge = min(end, (int(start // step) + 1) * step)
            bins[int(start // step)] += values[index - 1] * (edge - start) / step
            start = edge
    return bins


def plot(runs: Sequence[Run], path: Path) -> None:
    """Replicas against the load, and queued tasks, over time, as means over 5 minutes (1 minute for a run of
    3 hours or less): one line per policy, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and the same output everywhere
    import matplotlib.pyplot as plt

    span = max(run.end_s for run in runs)
    unit, scale = ("h", 3600) if span > 3 * 3600 else ("min", 60)
    step = 300.0 if span > 3 * 3600 else 60.0
    trace = runs[0].trace
    per_slot = runs[0].setup.slots
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 5.5), sharex=True, constrained_layout=True, height_ratios=(2, 1)
    )
    busy = [x / per_slot for x in load(trace, span, step)]
    times = [i * step / scale for i in range(len(busy))]
    top.fill_between(times, busy, step="post", color="0.85", label="load: pods the tasks keep busy")
    for run in runs:
        top.step(times, _means(run.timeline, 2, span, step), where="post", label=run.policy, linewidth=1.2)
        bottom.step(times, _means(run.timeline, 1, span, step), where="post", label=run.policy, linewidth=1)
    top.set_title(
        f"gpufleet simulate --trace {trace.name}  ({len(trace.tasks):,} tasks; {step / 60:.0f}-minute means)"
    )
    top.set_ylabel("replicas")
    bottom.set_ylabel("queued tasks")
    bottom.set_xlabel(f"time ({unit})")
    top.legend(loc="upper left", fontsize="small")
    fig.savefig(path, dpi=80)
    plt.close(fig)
