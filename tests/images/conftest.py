"""Fixtures of the image tests: the images `make images` built, and containers of them on the real engine.

Every test collected under tests/images is marked `images`: `pytest -m "not images"` leaves them out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from docker_engine import Container, require_image

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.images)


@pytest.fixture(scope="session")
def operator_image() -> str:
    return require_image("operator")


@pytest.fixture(scope="session")
def worker_cpu_image() -> str:
    return require_image("worker-cpu")


@pytest.fixture(scope="session")
def worker_cuda_image() -> str:
    return require_image("worker-cuda")


@pytest.fixture
def containers():
    """Start containers with `containers(image, *args, options=...)`; each is removed after the test, and its
    log printed (pytest shows it under a failed test)."""
    started: list[Container] = []

    def start(image: str, *args: str, options: tuple[str, ...] = ()) -> Container:
        container = Container(image, *args, options=options)
        started.append(container)
        return container.start()

    yield start
    for container in started:
        print(f"--- log of {container.name} ---\n{container.logs()[-6000:]}")
        container.close()
