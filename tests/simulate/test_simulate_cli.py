"""`gpufleet simulate` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from gpufleet.cli import main
from gpufleet_tools.simulate.metrics import KEYS

TRACE = "arrival_s,service_s,priority\n0,30,0\n5,30,0\n5,400,0\n60,10,6\n"


def gpufleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", "simulate", *args], capture_output=True, text=True, timeout=120
    )


def test_json_is_one_object_with_every_policy_and_the_plot_is_a_png(tmp_path):
    trace, png = tmp_path / "t.csv", tmp_path / "t.png"
    trace.write_text(TRACE)
    done = gpufleet("--trace", str(trace), "--json", "--plot", str(png))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)  # fails on anything but exactly one JSON document
    assert set(out["policies"]) == {"gpufleet", "gpufleet-drain", "keda", "ray-serve", "static"}
    for figures in out["policies"].values():
        assert set(KEYS) <= set(figures)
        assert figures["gpu_hours"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 200_000


def test_a_malformed_file_fails_on_stderr_naming_the_line(tmp_path):
    trace = tmp_path / "bad.csv"
    trace.write_text("arrival_s,service_s\n0,1\n2,oops\n")
    done = gpufleet("--trace", str(trace), "--json")
    assert done.returncode != 0
    assert done.stdout == ""
    assert "bad.csv:3: service_s is not a number: 'oops'" in done.stderr


def test_the_table_shows_every_policy(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text(TRACE)
    assert main(["simulate", "--trace", str(trace), "--startup-s", "30", "--slots", "2"]) == 0
    out = capsys.readouterr().out
    for word in (
        "gpufleet",
        "gpufleet-drain",
        "keda",
        "ray-serve",
        "static",
        "GPU-h",
        "x floor",
        "busy",
        "wait p50 s",
        "p95 s",
        "interrupted",
        "scale events (/h)",
        "floor 0.07 GPU-h",  # 470 s of tasks, 2 at a time on one GPU
        "startup_s 30",
    ):
        assert word in out


def test_spec_fields_are_checked_against_the_crd(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text(TRACE)
    assert (
        main(["simulate", "--trace", str(trace), "--json", "--spec", "scaleDownStabilizationSeconds=5"]) == 0
    )
    capsys.readouterr()
    assert main(["simulate", "--trace", str(trace), "--spec", "scaleDownStabilisation=5"]) == 2
    assert "spec.scaling.scaleDownStabilisation: no such field" in capsys.readouterr().err
    assert main(["simulate", "--trace", str(trace), "--spec", "maxStepUp=0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["simulate", "--trace", str(trace), "--spec", "paused=3"]) == 2
    assert "must be of type boolean" in capsys.readouterr().err
    assert main(["simulate", "--trace", str(trace), "--spec", "minReplicas=4", "--max-replicas", "2"]) == 2
    assert "minReplicas" in capsys.readouterr().err


def test_the_readme_table_compares_chosen_policies_at_several_sizes(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text(TRACE)
    args = ["simulate", "--trace", str(trace), "--max-replicas", "2", "--max-replicas", "4"]
    assert main([*args, "--policies", "gpufleet,keda,ray-serve", "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| trace (floor GPU-h) | maxReplicas | policy | GPU-h | x floor | busy |")
    rows = [line.split("|")[1:-1] for line in lines[2:]]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        ("2", "gpufleet"), ("", "keda"), ("", "ray-serve"), ("4", "gpufleet"), ("", "keda"), ("", "ray-serve")
    ]  # fmt: skip
    assert rows[0][0].strip() == "t.csv (0.13)"
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["max_replicas"]) == {"2", "4"}
    assert out["max_replicas"]["4"]["settings"]["max_replicas"] == 4
    assert main(["simulate", "--trace", str(trace), "--policies", "gpufleet,kedaa"]) == 2
    assert "no policy 'kedaa'" in capsys.readouterr().err


def test_the_plot_of_a_day_draws_the_chosen_policies(tmp_path):
    trace, png = tmp_path / "t.csv", tmp_path / "day.png"
    trace.write_text(TRACE)
    assert (
        main(["simulate", "--trace", str(trace), "--policies", "gpufleet,ray-serve", "--plot", str(png)]) == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
