"""The engine the tests (and kind) use: hack/docker-engine.sh finds or starts it, and privileged containers run on
it, `docker exec` into them too. On these VMs that needs the runc wrapper the script registers: the capability
bounding set lacks CAP_SYS_RESOURCE, which every privileged container asks for (../shared/CONTAINERS.md)."""

from __future__ import annotations

import subprocess

from docker_engine import REPO, Container, docker

ENGINE = REPO / "hack" / "docker-engine.sh"
CAP_SYS_ADMIN = 21


def effective_caps(status: str) -> int:
    (line,) = [line for line in status.splitlines() if line.startswith("CapEff:")]
    return int(line.split()[1], 16)


def test_start_is_idempotent_and_status_says_an_engine_answers(worker_cpu_image):
    before = subprocess.run([str(ENGINE), "status"], capture_output=True, text=True)
    assert before.returncode == 0, before.stderr
    again = subprocess.run([str(ENGINE), "start"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    # Whether this script started it or the engine was there before: nothing new is started.
    assert "starting dockerd" not in again.stderr, again.stderr
    assert subprocess.run([str(ENGINE), "status"], capture_output=True, text=True).stderr == before.stderr


def test_a_privileged_container_runs_and_takes_docker_exec(worker_cpu_image):
    run = docker(
        "run", "--rm", "--privileged", "--user", "0", "--entrypoint", "cat", worker_cpu_image, "/proc/self/status"
    )  # fmt: skip
    assert effective_caps(run.stdout) & (1 << CAP_SYS_ADMIN), "a privileged container has CAP_SYS_ADMIN"
    with Container(
        worker_cpu_image, "sleep", "300", options=("--privileged", "--user", "0"), name="gpufleet-privileged"
    ) as container:
        status = container.exec("cat", "/proc/self/status").stdout
        assert effective_caps(status) & (1 << CAP_SYS_ADMIN)
        assert (
            container.exec("sh", "-c", "mount -t tmpfs none /mnt && echo mounted").stdout.strip() == "mounted"
        )
