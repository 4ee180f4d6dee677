"""The built-in traces and the CSV reader."""

from __future__ import annotations

import pytest

from gpufleet_tools.simulate.traces import BUILT_IN, Task, TraceError, built_in, load, read_csv


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_traces_are_fixed_by_their_seed(name):
    first, again, other = built_in(name, 0), built_in(name, 0), built_in(name, 1)
    assert first == again
    assert first.tasks != other.tasks
    arrivals = [t.arrival_s for t in first.tasks]
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0
    assert all(t.service_s > 0 for t in first.tasks)
    assert first.about  # the generator's documentation travels with the trace


def test_built_in_traces_have_their_documented_shape():
    night = built_in("night-batch")
    assert len(night.tasks) == 1500 and night.tasks[-1].arrival_s <= 130
    assert 13 * 3600 < sum(t.service_s for t in night.tasks) / 0.7 < 16 * 3600  # mean ~24 s
    assert 12_000 < len(built_in("diurnal").tasks) < 14_500
    assert all(180 <= t.service_s <= 720 for t in built_in("long-tasks").tasks)


def write(tmp_path, text: str):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_a_good_file_with_priorities_unsorted_and_blank_lines(tmp_path):
    path = write(tmp_path, "service_s, arrival_s ,priority\n5,10,3\n\n2.5,0,\n")
    trace = load(str(path))
    assert trace.tasks == (Task(0, 2.5, 0), Task(10, 5, 3))
    assert trace.name == "trace.csv"


def test_the_priority_column_is_optional(tmp_path):
    assert read_csv(write(tmp_path, "arrival_s,service_s\n0,1\n")).tasks == (Task(0, 1),)


@pytest.mark.parametrize(
    "text, words",
    [
        ("arrival_s,priority\n0,1\n", ["trace.csv:1:", "missing column 'service_s'"]),
        ("arrival_s,service_s,prio\n0,1,1\n", ["trace.csv:1:", "unknown column 'prio'"]),
        ("arrival_s,service_s,service_s\n", ["trace.csv:1:", "named twice"]),
        ("arrival_s,service_s\n0,1\n1,x\n", ["trace.csv:3:", "service_s is not a number: 'x'"]),
        ("arrival_s,service_s\n0,1\n\n-4,1\n", ["trace.csv:4:", "arrival_s must be a finite number >= 0"]),
        ("arrival_s,service_s\n0,-1\n", ["trace.csv:2:", "service_s must be"]),
        ("arrival_s,service_s\n0,inf\n", ["trace.csv:2:", "finite"]),
        ("arrival_s,service_s\n0,1,2\n", ["trace.csv:2:", "3 fields, the header has 2"]),
        ("arrival_s,service_s,priority\n0,1,10\n", ["trace.csv:2:", "priority must be 0 to 9"]),
        ("arrival_s,service_s,priority\n0,1,1.5\n", ["trace.csv:2:", "priority is not an integer"]),
        ("arrival_s,service_s\n", ["no tasks"]),
        ("", ["empty file"]),
    ],
)
def test_a_malformed_file_is_refused_naming_the_line(tmp_path, text, words):
    with pytest.raises(TraceError) as err:
        read_csv(write(tmp_path, text))
    for word in words:
        assert word in str(err.value)


def test_a_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="cannot read"):
        load(str(tmp_path / "nope.csv"))
