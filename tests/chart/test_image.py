"""operator/Dockerfile: lint-clean, consistent with the chart, and its pinned requirements install and run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from helm_chart import CHART
from packaging.requirements import Requirement

ROOT = CHART.parents[1]
DOCKERFILE = ROOT / "operator" / "Dockerfile"
LOCK = ROOT / "operator" / "requirements.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instruction(name: str) -> list[str]:
    return [
        line.split(None, 1)[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith(name + " ")
    ]


def pins() -> dict[str, str]:
    out = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_hadolint_is_clean():
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_agrees_with_the_chart_and_the_package():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    entrypoint, cmd = json.loads(entrypoint), json.loads(cmd)
    assert entrypoint == ["tini", "--"]
    assert cmd == [
        "python",
        "-m",
        "gpufleet",
        "--liveness",
        f"http://0.0.0.0:{values['livenessPort']}/healthz",
    ]
    # The chart runs the image's entrypoint and program, and adds its flags.
    assert values["command"] == entrypoint + cmd[:3]
    (user,) = instruction("USER")
    assert user == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"
    assert f"ARG VERSION={chart['appVersion']}" in DOCKERFILE.read_text()
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
    assert f"EXPOSE {values['metrics']['port']} {values['livenessPort']}" in DOCKERFILE.read_text()
    # The dependency layer comes before the code: a code change must not reinstall the dependencies.
    copies = instruction("COPY")
    assert copies[0] == "operator/requirements.txt operator/requirements.txt"


def test_dockerfile_stages_bases_and_the_package_folders():
    text = DOCKERFILE.read_text()
    # Multi-stage: a build stage and a runtime stage on the same public base by default (users pull it); the
    # base is an ARG so that hack/images.sh can build FROM a local one where no registry is reachable.
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    stages = instruction("FROM")
    assert stages[-2:] == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    # The wheelhouse only ever reaches the build as a mount: the runtime stage takes the virtualenv alone.
    assert not any("--from=wheelhouse" in c for c in instruction("COPY"))
    runtime = text[text.rindex("\nFROM ") :]
    assert [c for c in instruction("COPY") if c in runtime and c.startswith("--from")] == [
        "--from=build /opt/venv /opt/venv"
    ]
    assert "pip install -r operator/requirements.txt" in text and "pip install --no-deps ." in text
    assert re.search(r"apt-get install -y --no-install-recommends tini=[\d.]+", runtime), "tini, pinned"
    # `pip install .` builds every package folder of the wheel target: each must be in the build context.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for folder in PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert f"{folder} {folder}" in instruction("COPY"), f"operator/Dockerfile does not COPY {folder}"
        assert f"!{folder}" in ignore, f".dockerignore keeps {folder} out of the build context"
    assert not re.search(r"(PASSWORD|TOKEN|SECRET|_KEY)\s*=", text, re.I)


def test_the_lock_pins_every_requirement_of_the_operator():
    project = PYPROJECT["project"]
    pinned = pins()
    for text in project["dependencies"] + project["optional-dependencies"]["operator"]:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pinned, f"operator/requirements.txt lacks {requirement.name} (pyproject: {text})"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} does not meet {text}"


@pytest.mark.slow
@pytest.mark.network
def test_the_image_requirements_install_into_a_fresh_venv_and_run(tmp_path):
    """What the image's build stage does, with a virtualenv for the image: lock alone, then the package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]

    def run(argv):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done.stdout

    # --no-deps: the lock must be complete on its own; `pip check` proves it.
    run(pip + ["--no-deps", "-r", str(LOCK)])
    run(pip + ["--no-deps", str(ROOT)])
    run([str(venv / "bin" / "python"), "-m", "pip", "check"])
    python = str(venv / "bin" / "python")
    assert "run the operator" in run([python, "-m", "gpufleet", "--help"])
    assert "--liveness" in run([python, "-m", "gpufleet", "run", "--help"])
    # Importing the handlers imports kopf, the Kubernetes client, redis and prometheus_client.
    run([python, "-c", "import gpufleet.handlers"])


def render_notes(helm, chart, *sets: str) -> str:
    return helm.render(sets=sets, chart=chart).one("ConfigMap", "notes")["data"]["notes"]


@pytest.mark.binaries
def test_the_notes_point_at_no_image_that_does_not_exist(helm, notes_chart):
    """No gpufleet image is published: the notes' first queue runs the worker image the user names, or shows a
    placeholder that says so, and a chart still on the default operator image is told it cannot be pulled."""
    notes = render_notes(helm, notes_chart)
    worker_image = re.search(r"^\s+image: (\S+)(.*)$", notes, re.M)
    assert (
        worker_image[1].startswith("registry.example.com/")
        and "no gpufleet image is published" in worker_image[2]
    )
    assert "ghcr.io/gpufleet/gpufleet-worker" not in notes
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert f"cannot pull {values['image']['repository']}" in notes

    notes = render_notes(
        helm,
        notes_chart,
        "workerImage=registry.test/team/worker:1.0-cuda",
        "image.repository=registry.test/op",
    )
    assert re.search(r"^\s+image: registry\.test/team/worker:1\.0-cuda$", notes, re.M)
    assert "cannot pull" not in notes and "registry.example.com" not in notes
