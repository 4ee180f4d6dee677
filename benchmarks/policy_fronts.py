"""gpufleet's trade-off curve against every KEDA and Ray Serve setting, on seeded traces of every family.

    python benchmarks/policy_fronts.py [--seeds N] [--sizes 10,40,80] [--families a,b] [--jobs 2]
                                       [--save FILE.json] [--listing] [--plot FILE.png]
    python benchmarks/policy_fronts.py --load FILE.json --systems gpufleet   # the rivals' points read back


For each trace (family x seed) and maxReplicas it runs gpufleet over targetWaitSeconds 30 to 960 s and its
default, KEDA over listLength 1 to 20 x cooldownPeriod 60/300 s and Ray Serve over target_ongoing_requests
1/2/4 (gpufleet_tools/simulate/fronts.py), then prints per family and size the share of traces where
gpufleet's curve reaches every rival point (GPU-hours within 1.02x and p95 within 1 s), where no rival point
dominates gpufleet's default, where a lower target never gave a higher p95, where gpufleet's lowest p95 is as
low as any rival's, and where it makes no more scale events than KEDA at the same p95; then the worst cases.
`--listing` prints one row per trace instead of the summary (docs/policy-fronts.md is that listing).
Simulated figures, not measured on a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gpufleet_tools.simulate.families import FAMILIES
from gpufleet_tools.simulate.fronts import (
    SIZES,
    as_dict,
    from_dicts,
    judge,
    listing,
    plot,
    summary,
    sweep,
    worst,
)


def _one(job: tuple[str, int, int, tuple[str, ...]]) -> tuple[str, int, int, list[dict]]:
    name, seed, size, only = job
    return name, seed, size, as_dict(sweep(name, seed, size, only))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--seeds", type=int, default=25, help="seeds 0..N-1 of every family (default 25: 200 traces)"
    )
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--sizes", type=_ints, default=list(SIZES), help="maxReplicas (default 10,40,80)")
    p.add_argument("--families", default=",".join(FAMILIES), help="default: every family")
    p.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    p.add_argument("--save", type=Path, help="write every point to this JSON file")
    p.add_argument(
        "--systems",
        default="gpufleet,keda,ray-serve",
        help="sweep only these systems (with --load: the others' points come from the files)",
    )
    p.add_argument(
        "--load",
        type=Path,
        action="append",
        help="read points from --save files (repeatable) for the systems not swept",
    )
    p.add_argument("--listing", action="store_true", help="print one row per trace and size instead")
    p.add_argument("--plot", type=Path, help="draw the fronts of each family's first seed at --plot-size")
    p.add_argument("--plot-size", type=int, default=40, help="maxReplicas of the plot (default 40)")
    args = p.parse_args()

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"no family {unknown[0]!r}; the families are {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(name, seed, size) for size in args.sizes for name in families for seed in seeds]
    started = time.monotonic()
    swept = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    results: dict[tuple[str, int, int], list] = {job: [] for job in jobs}
    for path in args.load or ():
        for r in json.loads(path.read_text()):
            key = (r["family"], r["seed"], r["size"])
            if key in results:
                results[key] += [p for p in from_dicts(r["points"]) if p.system not in swept]
    if not args.load or swept:
        todo = [(*job, swept) for job in jobs]
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for i, (name, seed, size, points) in enumerate(pool.map(_one, todo, chunksize=1)):
                results[(name, seed, size)] += from_dicts(points)
                if os.environ.get("FRONTS_PROGRESS"):
                    print(f"{i + 1}/{len(jobs)} {name}-{seed} @{size}", file=sys.stderr, flush=True)
    if args.save:
        rows = [
            {"family": n, "seed": s, "size": z, "points": as_dict(points)}
            for (n, s, z), points in results.items()
        ]
        args.save.write_text(json.dumps(rows))
    if not all({p.system == "gpufleet" for p in points} == {True, False} for points in results.values()):
        # One side alone (saved to be read back with --load): nothing to judge it against.
        print("judging needs gpufleet's points and the rivals': sweep both, or --load them", file=sys.stderr)
        return 0 if args.save else 2
    verdicts = [judge(f"{n}-{s}", z, results[(n, s, z)]) for (n, s, z) in jobs]
    if args.listing:
        print(listing(verdicts))
    else:
        print(summary(verdicts))
        print()
        print("Worst cases (the rival point furthest out of gpufleet's reach):")
        for v in worst(verdicts):
            print(f"- {v.trace} at maxReplicas {v.size}: {v.worst}")
        print(f"\n{len(jobs)} traces x sizes in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if args.plot:
        size = args.plot_size
        fronts = {f"{n}-{args.first_seed}": results[(n, args.first_seed, size)] for n in families}
        plot(fronts, args.plot, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
