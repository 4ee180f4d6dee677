"""Every CLI entry fails in one line a user can act on, never a traceback: a missing dependency, no cluster
credentials, a broker that does not answer."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from support import free_port

# Runs the CLI in a fresh interpreter where `hidden` cannot be imported, as on a machine without that extra.
HIDING = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    class Hide(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {hidden!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    from gpufleet.cli import main
    sys.exit(main({argv!r}))
    """
)


def gpufleet(argv: list[str], hidden: tuple[str, ...] = (), env: dict | None = None, tmp_path=None):
    code = HIDING.format(hidden=set(hidden), argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_a_tool_without_the_dev_extra_names_the_extra():
    line = one_line(gpufleet(["simulate", "--trace", "spiky"], hidden=("rich", "matplotlib")))
    assert "dev" in line and ("rich" in line or "matplotlib" in line), line


def test_the_demo_without_the_dev_extra_names_the_extra():
    line = one_line(gpufleet(["demo", "--no-live"], hidden=("rich", "numpy")))
    assert "'dev'" in line, line


def test_run_without_the_operator_extra_names_the_extra(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}
    line = one_line(gpufleet(["run"], hidden=("kopf",), env=env))
    assert "kopf" in line and "'operator'" in line, line


def test_run_without_a_kubeconfig_says_so(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    line = one_line(gpufleet(["run"], env=env))
    assert "KUBECONFIG is unset" in line and "~/.kube/config" in line, line
    env["KUBECONFIG"] = str(tmp_path / "nowhere")
    line = one_line(gpufleet(["run"], env=env))
    assert "nowhere" in line, line


def test_demo_with_a_missing_kubeconfig_says_so(tmp_path):
    missing = tmp_path / "nowhere"
    argv = ["demo", "--kubeconfig", str(missing), "--broker", "redis://x:6379/0", "--image", "w"]
    line = one_line(gpufleet(argv))
    assert str(missing) in line, line


def test_depth_against_a_broker_that_does_not_answer():
    port = free_port()  # a port nobody listens on
    argv = ["depth", "--broker", f"redis://127.0.0.1:{port}/0", "--queue", "celery", "--timeout", "1"]
    line = one_line(gpufleet(argv))
    assert "cannot read the broker" in line, line
