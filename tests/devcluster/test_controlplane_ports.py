"""The local control plane on ports taken under it: a free port is free when picked, not always when bound."""

from __future__ import annotations

import socket

import pytest

from gpufleet_tools.devcluster import controlplane
from gpufleet_tools.devcluster.binaries import BinariesMissing, bin_dir

pytestmark = pytest.mark.cluster


def test_a_port_taken_between_its_pick_and_its_bind_starts_it_again_on_new_ports(monkeypatch, tmp_path):
    try:
        binaries = bin_dir(build=True)
    except BinariesMissing as exc:
        pytest.fail(f"the local control plane's binaries are not available.\n{exc}", pytrace=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The third port picked is the API server's: it is taken by the time the API server binds it.
        free = controlplane.free_port
        picks = iter([free(), free(), port])
        monkeypatch.setattr(controlplane, "free_port", lambda: next(picks, None) or free())
        plane = controlplane.ControlPlane(binaries, tmp_path / "plane")
        try:
            plane.start()
            assert plane.server and plane.server != f"https://127.0.0.1:{port}"
            assert plane._get("/readyz")
            log = (tmp_path / "plane" / "logs" / "kube-apiserver.log").read_text()
            assert controlplane.PORT_TAKEN in log and f"127.0.0.1:{port}" in log
        finally:
            plane.close()
