"""python -m gpufleet_tools.devcluster up|down|status: a local Kubernetes control plane with fake GPU nodes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gpufleet_tools.devcluster import service
from gpufleet_tools.devcluster.binaries import BinariesMissing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpufleet_tools.devcluster", description=__doc__)
    parser.add_argument(
        "command",
        choices=("up", "down", "status", "serve"),
        help="up: start in the background (idempotent); down: stop; status: exit 0 when up; serve: foreground",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=service.default_state_dir(),
        help="where the cluster keeps its data, kubeconfig and logs (default: %(default)s)",
    )
    parser.add_argument("--gpu-nodes", type=int, default=2, help="fake GPU nodes to start with (default: 2)")
    parser.add_argument("--gpus-per-node", type=int, default=4, help="nvidia.com/gpu per node (default: 4)")
    args = parser.parse_args(argv)
    state_dir = args.state_dir.expanduser().resolve()

    if args.command == "serve":
        service.serve(state_dir, gpu_nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node)
        return 0
    if args.command == "status":
        running = service.info(state_dir)
        print(running.describe() if running else f"no dev cluster running (state directory {state_dir})")
        return 0 if running else 1
    if args.command == "down":
        stopped = service.down(state_dir)
        print("dev cluster stopped" if stopped else f"no dev cluster running (state directory {state_dir})")
        return 0
    try:
        print(service.up(state_dir, gpu_nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node).describe())
    except (BinariesMissing, RuntimeError) as exc:
        print(f"dev-cluster up: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
