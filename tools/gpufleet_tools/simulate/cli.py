"""A discrete-event simulation of a GPU worker fleet on one task trace, under the operator's own scaling
policy, a model of KEDA's Redis scaler with an HPA, a model of Ray Serve's autoscaler for asynchronous inference,
and a static fleet at maxReplicas.

(`gpufleet simulate`: its arguments, and the run from a trace to a table, a plot or JSON.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpufleet_tools.simulate.traces import BUILT_IN

POLICIES = ("gpufleet", "gpufleet-drain", "keda", "ray-serve", "static")


def _at_least(low: float, kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a{'n integer' if kind is int else ' number'}: {text!r}"
            ) from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be at least {low}: {text!r}")
        return value

    return parse


def _field(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=VALUE, e.g. scaleDownStabilizationSeconds=120: {text!r}"
        )
    return name.strip(), value.strip()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace",
        default="night-batch",
        metavar="NAME|FILE|all",
        help=f"a built-in trace ({', '.join(BUILT_IN)}), a CSV file with the columns arrival_s,service_s "
        "and optionally priority, or 'all' for every built-in trace (default: night-batch)",
    )
    p.add_argument(
        "--family",
        metavar="NAME",
        help="instead of --trace, a trace drawn from a family (see gpufleet_tools/simulate/families.py) by "
        "--seed, sized to each --max-replicas, on the family's cluster: start-ups drawn for the seed (20 s to "
        "3 minutes, warm and cold nodes), in place of --startup-s, --startup-spread and --cold-node-s",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print one Markdown table of every trace and size instead (the README's)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="write a PNG of the replicas against the load, and of the queue, over time "
        "(with --trace all, one per trace: FILE's name gets -TRACE added)",
    )
    p.add_argument(
        "--policies",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        metavar="NAME,...",
        help=f"run and show only these policies, e.g. gpufleet,keda,ray-serve (default: all of "
        f"{', '.join(POLICIES)})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the built-in traces and of the start-ups (default 0)"
    )
    p.add_argument(
        "--max-replicas",
        type=_at_least(1, int),
        action="append",
        metavar="N",
        help="maxReplicas of every fleet (default: the CRD's, 10); repeat it to compare at several sizes",
    )
    p.add_argument(
        "--target",
        type=_at_least(1, int),
        help="gpufleet's targetTasksPerReplica (default: the CRD's, 1; with --slots N, N is the like-for-like "
        "setting)",
    )
    p.add_argument(
        "--spec",
        type=_field,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any field of a GpuTaskQueue's spec.scaling for the gpufleet policy, as in the CRD (repeatable)",
    )
    p.add_argument(
        "--drain-within-s",
        type=_at_least(1, int),
        metavar="SECONDS",
        help="drainWithinSeconds of the gpufleet-drain policy, which sizes the fleet by measured throughput "
        "(default: the --spec drainWithinSeconds if given, else 600)",
    )
    p.add_argument(
        "--startup-s",
        type=_at_least(0, float),
        default=60.0,
        help="mean seconds from a pod's creation to its worker taking tasks: image pull, CUDA (default 60)",
    )
    p.add_argument(
        "--startup-spread",
        type=_at_least(0, float),
        default=0.3,
        metavar="SIGMA",
        help="each pod's start-up is drawn from a lognormal of mean --startup-s and this sigma; 0 makes them "
        "all equal (default 0.3: 90%% of pods start within 0.6 to 1.6 times the mean)",
    )
    p.add_argument(
        "--cold-node-s",
        type=_at_least(0, float),
        default=0.0,
        metavar="SECONDS",
        help="a pod that finds no idle GPU node waits this long more for a new one (a cluster autoscaler "
        "adding it, minutes); a node without a pod is removed after --node-idle-s (default 0: a node is "
        "always there)",
    )
    p.add_argument(
        "--node-idle-s",
        type=_at_least(0, float),
        default=600.0,
        help="with --cold-node-s: seconds before an idle node is removed (the cluster autoscaler's "
        "scale-down-unneeded-time, default 600)",
    )
    p.add_argument("--slots", type=_at_least(1, int), default=1, help="tasks per pod at once (default 1)")
    p.add_argument("--gpus", type=_at_least(1, int), default=1, help="GPUs per pod (default 1)")
    p.add_argument(
        "--redelivery-s",
        type=_at_least(0, float),
        default=0.0,
        help="seconds before a killed task is back in the queue; Celery on Redis waits for the visibility "
        "timeout (default 0, the most favourable to a policy that kills tasks)",
    )
    p.add_argument(
        "--grace-s",
        type=_at_least(0, float),
        default=0.0,
        help="warm shutdown of a deleted pod: it finishes its tasks for this long before it is killed (default 0)",
    )
    p.add_argument(
        "--keda-list-length", type=_at_least(1, int), default=5, help="KEDA's listLength (default 5)"
    )
    p.add_argument(
        "--keda-cooldown-s",
        type=_at_least(0, float),
        default=300.0,
        help="KEDA's cooldownPeriod (default 300)",
    )
    p.add_argument(
        "--keda-polling-s", type=_at_least(1, float), default=30.0, help="KEDA's pollingInterval (default 30)"
    )
    p.add_argument(
        "--ray-target",
        type=_at_least(0.01, float),
        default=2.0,
        help="Ray Serve's target_ongoing_requests (default 2)",
    )
    p.add_argument(
        "--stall-s",
        type=_at_least(1, float),
        help="give up once work has been pending this long with no task completing (and the last task "
        "arrived at least this long ago), and report what is left unfinished (default: an hour, or twice the "
        "longest task if longer)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gpufleet.spec import SpecError
    from gpufleet_tools.simulate.engine import Setup, simulate
    from gpufleet_tools.simulate.families import FAMILIES, family, family_setup
    from gpufleet_tools.simulate.policies import (
        DRAIN_WITHIN_S,
        KedaSettings,
        RaySettings,
        fleet_policies,
        gpufleet_spec,
    )
    from gpufleet_tools.simulate.report import figures, markdown, plot, table
    from gpufleet_tools.simulate.traces import TraceError, load

    overrides = dict(args.spec)
    if args.target is not None:
        overrides["targetTasksPerReplica"] = str(args.target)
    sizes = args.max_replicas or [None]
    unknown = [name for name in args.policies or () if name not in POLICIES]
    try:
        if unknown:
            raise SpecError("--policies", f"no policy {unknown[0]!r}; the policies are {', '.join(POLICIES)}")
        specs = [gpufleet_spec({**overrides, **({"maxReplicas": str(n)} if n else {})}) for n in sizes]
        drain_within_s = args.drain_within_s or specs[0].drain_within_seconds or DRAIN_WITHIN_S
        # Checked against the CRD as a spec field would be (its maximum, for one).
        gpufleet_spec({**overrides, "drainWithinSeconds": str(drain_within_s)})
        if args.family is not None and args.family not in FAMILIES:
            raise SpecError("--family", f"no family {args.family!r}; the families are {', '.join(FAMILIES)}")
        if args.family is None:
            traces = [load(name, args.seed) for name in (BUILT_IN if args.trace == "all" else [args.trace])]
    except (SpecError, TraceError) as exc:
        print(f"gpufleet simulate: {exc}", file=sys.stderr)
        return 2
    common = {
        "slots": args.slots,
        "gpus": args.gpus,
        "redelivery_s": args.redelivery_s,
        "grace_s": args.grace_s,
        "stall_s": args.stall_s,
        "node_idle_s": args.node_idle_s,
    }
    if args.family is not None:
        setup = family_setup(args.family, args.seed, **common)
    else:
        setup = Setup(
            startup_s=args.startup_s,
            startup_spread=args.startup_spread,
            cold_node_s=args.cold_node_s,
            seed=args.seed,
            **common,
        )
    # Off a terminal (a file, the README) rich would wrap the table at 80 columns; 150 fit every column.
    console = Console(emoji=False) if sys.stdout.isatty() else Console(width=150, emoji=False)
    results, rows = {}, []
    for spec in specs:
        keda = KedaSettings(
            polling_interval_s=args.keda_polling_s,
            cooldown_s=args.keda_cooldown_s,
            max_replica_count=spec.max_replicas,
            list_length=args.keda_list_length,
        )
        ray = RaySettings(target_ongoing_requests=args.ray_target, max_replicas=spec.max_replicas)
        settings = {
            "max_replicas": spec.max_replicas,
            "target_wait_s": spec.target_wait_seconds,
            "target_tasks_per_replica": spec.target_tasks_per_replica,
            "drain_within_s": drain_within_s,
            "startup_s": setup.startup_s,
            "startup_spread": setup.startup_spread,
            "cold_node_s": setup.cold_node_s,
            "slots": setup.slots,
            "gpus_per_pod": setup.gpus,
            "redelivery_s": setup.redelivery_s,
            "grace_s": setup.grace_s,
            "keda_list_length": keda.list_length,
            "keda_cooldown_s": keda.cooldown_s,
            "keda_polling_s": keda.polling_interval_s,
            "ray_target": ray.target_ongoing_requests,
            "seed": args.seed,
        }
        per_trace = {}
        if args.family is not None:
            traces = [family(args.family, args.seed, spec.max_replicas * setup.slots)]
        for trace in traces:
            policies = [
                policy
                for policy in fleet_policies(spec, keda, drain_within_s, ray, setup.slots)
                if args.policies is None or policy.name in args.policies
            ]
            runs = [simulate(trace, policy, setup) for policy in policies]
            per_trace[trace.name] = figures(runs)
            rows.append((spec.max_replicas, runs))
            if args.plot:
                path = args.plot
                if len(traces) > 1:
                    path = path.with_stem(f"{path.stem}-{trace.name}")
                if len(specs) > 1:
                    path = path.with_stem(f"{path.stem}-{spec.max_replicas}")
                try:
                    plot(runs, path)
                except OSError as exc:
                    print(
                        f"gpufleet simulate: cannot write the plot {path}: {exc.strerror or exc}",
                        file=sys.stderr,
                    )
                    return 2
            if not (args.json or args.markdown):
                console.print(table(runs, settings))
        if len(traces) == 1:
            (only,) = per_trace.values()
            results[spec.max_replicas] = {"trace": traces[0].name, "settings": settings, **only}
        else:
            results[spec.max_replicas] = {"settings": settings, "traces": per_trace}
    if args.markdown:
        order = [trace.name for trace in traces]  # trace by trace, each at every size
        print(markdown(sorted(rows, key=lambda row: order.index(row[1][0].trace.name))))
    if args.json:
        if len(specs) == 1:
            (only,) = results.values()
            print(json.dumps(only))
        else:
            print(json.dumps({"max_replicas": {str(n): r for n, r in results.items()}}))
    return 0
