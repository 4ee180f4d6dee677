"""The `gpufleet` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from gpufleet_worker import contract

# The tools install apart (the `dev` extra) and are imported only when their command runs.
TOOLS = {
    "simulate": (
        "gpufleet_tools.simulate.cli",
        "compare gpufleet's policy, KEDA-style autoscaling and a static fleet on a task trace",
    ),
    "demo": (
        "gpufleet_tools.demo",
        "a local cluster with simulated GPU nodes, a burst of real tasks, the fleet scaling live",
    ),
}
COMMANDS = ("run", "depth", *TOOLS)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _depth(args: argparse.Namespace) -> int:
    from gpufleet.broker import BrokerUnreachable, Connection, Layout, RedisProbe, Request

    layout = Layout(args.global_keyprefix, tuple(args.priority_steps), args.sep, args.unacked_key)
    probe = RedisProbe(
        Connection(args.broker, password=os.environ.get("GPUFLEET_BROKER_PASSWORD")), args.timeout
    )
    try:
        reading = probe.read([Request("cli", tuple(dict.fromkeys(args.queue)), layout)])["cli"]
    except BrokerUnreachable as exc:
        print(f"gpufleet depth: cannot read the broker {exc}", file=sys.stderr)
        return 2
    finally:
        probe.close()
    out = {q: {"queued": d.queued, "reserved": d.reserved} for q, d in reading.queues.items()}
    print(json.dumps(out))
    return 0


def _credentials_problem() -> str | None:
    """Why the operator could not reach a cluster, in one line, or None: in a pod its ServiceAccount's token,
    elsewhere $KUBECONFIG's files or ~/.kube/config."""
    if (SERVICE_ACCOUNT_NAMESPACE.parent / "token").exists():
        return None
    if os.environ.get("KUBECONFIG"):
        paths = [Path(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
        missing = [str(p) for p in paths if not p.exists()]
        return f"KUBECONFIG names files that do not exist: {', '.join(missing)}" if missing else None
    if not (Path.home() / ".kube" / "config").exists():
        return (
            "no cluster to run against: not in a pod, KUBECONFIG is unset and ~/.kube/config does not exist"
        )
    return None


def _run(args: argparse.Namespace) -> int:
    if problem := _credentials_problem():
        print(f"gpufleet run: {problem}", file=sys.stderr)
        return 2
    import kopf

    import gpufleet.handlers  # noqa: F401 - registers the handlers

    if args.gpu_budget is not None:
        os.environ["GPUFLEET_GPU_BUDGET"] = str(args.gpu_budget)
    kopf.configure(verbose=args.verbose, log_prefix=True)
    if (
        not args.verbose
    ):  # kopf logs every watch event it hands over at INFO: one line per pod change is noise
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=True,
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(election=_election(args)),
    )
    return 0


def _election(args: argparse.Namespace):
    """The Lease this replica competes for, or None (one replica alone: it writes from the start)."""
    if not args.leader_election:
        return None
    from gpufleet.leader import Election, Timing

    try:
        timing = Timing(args.lease_duration, args.renew_deadline, args.retry_period)
    except ValueError as exc:
        raise SystemExit(f"gpufleet run: {exc}") from None
    namespace = args.lease_namespace or _own_namespace()
    identity = args.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    return Election(namespace, args.lease_name, identity, timing)


def _own_namespace() -> str:
    """The pod's namespace in a cluster (its ServiceAccount's mount), else `default`."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return "default"


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not steps or any(s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"priority steps must be non-negative integers: {text!r}")
    return steps


def parser(tool: str | None = None) -> argparse.ArgumentParser:
    """The CLI; a tool's own arguments are added only when `tool` names it, so `run` imports no tool."""
    p = argparse.ArgumentParser(
        prog="gpufleet", description="Autoscaled fleets of GPU Celery workers on Kubernetes."
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (as `python -m gpufleet` does)")
    run.add_argument(
        "--namespace", "-n", action="append", help="watch only this namespace (repeatable); default: all"
    )
    run.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint ('' for none)"
    )
    run.add_argument(
        "--gpu-budget",
        type=int,
        default=None,
        help="GPUs all GpuTaskQueues may use together (also $GPUFLEET_GPU_BUDGET); default: no budget",
    )
    run.add_argument("--verbose", action="store_true")
    ha = run.add_argument_group(
        "leader election",
        "With several operator replicas, exactly one writes: the holder of a coordination.k8s.io Lease. A "
        "standby takes over within the lease duration plus the retry period after the leader dies, within the "
        "retry period after it stops gracefully.",
    )
    ha.add_argument(
        "--leader-election", action="store_true", help="compete for the Lease (off: write at once)"
    )
    ha.add_argument("--lease-name", default="gpufleet-operator", help="name of the Lease (gpufleet-operator)")
    ha.add_argument(
        "--lease-namespace", default=None, help="namespace of the Lease; default: the pod's own, else default"
    )
    ha.add_argument(
        "--identity",
        default=None,
        help="this replica's name in the Lease; default: host name and a random id",
    )
    ha.add_argument(
        "--lease-duration", type=float, default=15.0,
        help="seconds a Lease left unrenewed is taken over by a standby (15)",
    )  # fmt: skip
    ha.add_argument(
        "--renew-deadline", type=float, default=10.0,
        help="seconds after its last renewal began that a leader stops writing; below the duration (10)",
    )  # fmt: skip
    ha.add_argument(
        "--retry-period", type=float, default=2.0, help="seconds between renewals and between looks (2)"
    )
    run.set_defaults(func=_run)

    depth = sub.add_parser(
        "depth",
        help="print the depth of Celery queues on a Redis broker as one JSON object",
        description="Prints {queue: {queued, reserved}} for the named queues, read in one round trip. "
        "A password may come in the URL or in $GPUFLEET_BROKER_PASSWORD.",
    )
    depth.add_argument("--broker", required=True, help="Redis URL, e.g. redis://127.0.0.1:6379/0")
    depth.add_argument("--queue", required=True, action="append", help="Celery queue name (repeatable)")
    depth.add_argument("--global-keyprefix", default="", help="kombu's global_keyprefix")
    depth.add_argument(
        "--priority-steps",
        type=_steps,
        default=list(contract.KOMBU_PRIORITY_STEPS),
        help="kombu's priority_steps (0,3,6,9)",
    )
    depth.add_argument(
        "--sep",
        type=contract.separator,
        default=contract.KOMBU_SEP,
        help="kombu's priority separator (\\x06\\x16)",
    )
    depth.add_argument("--unacked-key", default=contract.UNACKED_KEY, help="kombu's unacked_key")
    depth.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the broker")
    depth.set_defaults(func=_depth)

    _add_tools(sub, tool)
    return p


def _add_tools(sub: argparse._SubParsersAction, tool: str | None) -> None:
    for name, (module_name, summary) in TOOLS.items():
        if name != tool:
            sub.add_parser(name, help=summary, add_help=False)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise SystemExit(
                f"gpufleet {name}: the Python module {exc.name} is missing; the tools install with the 'dev' "
                "extra (pip install 'gpufleet[dev]', or from a checkout: pip install './[dev]')"
            ) from None
        cmd = sub.add_parser(
            name,
            help=summary,
            description=(module.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(func=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tool = argv[0] if argv and argv[0] in TOOLS else None
    args = parser(tool).parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("gpufleet", "gpufleet_worker", "gpufleet_tools"):
            raise
        extra = "dev" if args.command in TOOLS else "operator"
        print(
            f"gpufleet {args.command}: the Python module {exc.name} is missing; install the '{extra}' extra "
            f"(pip install 'gpufleet[{extra}]', or from a checkout: pip install './[{extra}]')",
            file=sys.stderr,
        )
        return 2
