"""The simulator's output: a terminal table, a PNG timeline, and one JSON object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpufleet_tools.simulate.engine import Run
from gpufleet_tools.simulate.metrics import summarize


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


def _setting(v: Any) -> str:
    return "auto" if v is None else f"{v:g}" if isinstance(v, int | float) else str(v)


def _ratio(x: float, floor: float) -> str:
    return f"{x / floor:.2f}" if floor else "-"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def plot(runs: Sequence[Run], path: Path) -> None:
    """Queued tasks and replicas over time, one line per policy, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and the same output everywhere
    import matplotlib.pyplot as plt

    span = max(run.end_s for run in runs)
    unit, scale = ("h", 3600) if span > 3 * 3600 else ("min", 60)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, constrained_layout=True)
    for run in runs:
        t = [p[0] / scale for p in run.timeline]
        top.step(t, [p[1] for p in run.timeline], where="post", label=run.policy, linewidth=1)
        bottom.step(t, [p[2] for p in run.timeline], where="post", label=run.policy, linewidth=1)
    trace = runs[0].trace
    top.set_title(f"gpufleet simulate --trace {trace.name}  ({len(trace.tasks):,} tasks)")
    top.set_ylabel("queued tasks")
    bottom.set_ylabel("replicas")
    bottom.set_xlabel(f"time ({unit})")
    top.legend(loc="upper right")
    fig.savefig(path, dpi=80)
    plt.close(fig)
