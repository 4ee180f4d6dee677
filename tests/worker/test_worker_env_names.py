"""Both sides of the pod's environment agree: every name the operator writes into a worker pod is one the worker's
settings read, and every name the settings read is one the contract declares (the operator's or a user's)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from gpufleet.resources import worker_env
from gpufleet.spec import parse_spec
from gpufleet_worker import contract
from gpufleet_worker.contract import Env
from gpufleet_worker.settings import from_env

REF = {"name": "s", "key": "k"}
# Between them these specs take every branch of the operator's worker_env.
SPECS = [
    {"broker": {"url": "redis://r:6379/0"}, "queues": ["gpu"], "worker": {"image": "w:1"}},
    {"broker": {"urlSecretRef": REF, "passwordSecretRef": REF, "database": 3,
                "tls": {"enabled": True, "insecureSkipVerify": True, "caSecretRef": REF}},
     "queues": ["gpu"], "worker": {"image": "w:1", "gpus": 1, "requireGpu": True}},
    {"broker": {"sentinel": {"masterName": "m", "sentinels": ["s1:26379"], "passwordSecretRef": REF}},
     "queues": ["gpu"], "worker": {"image": "w:1", "gpus": 0}},
]  # fmt: skip


class Recording(Mapping[str, str]):
    """An environment that remembers every name asked of it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values, self.asked = dict(values), set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self.values[name]

    def get(self, name, default=None):
        self.asked.add(name)
        return self.values.get(name, default)

    def __contains__(self, name) -> bool:
        self.asked.add(name)
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("settings must ask for names, not list the environment")

    def __len__(self) -> int:
        return len(self.values)


def written() -> set[str]:
    names: set[str] = set()
    for raw in SPECS:
        names |= {var["name"] for var in worker_env(parse_spec(raw), "ns", "q")}
    return names


def read() -> set[str]:
    env = Recording({})
    from_env(env)
    sentinel = Recording({Env.BROKER_URL: "sentinel://s1:26379", Env.BROKER_SENTINEL_MASTER: "m"})
    from_env(sentinel)
    tls = Recording({Env.BROKER_URL: "rediss://r:6379/0"})
    from_env(tls)
    return env.asked | sentinel.asked | tls.asked


def test_every_name_the_operator_writes_is_read_by_the_worker():
    unknown = written() - read() - {contract.CUPY_CACHE_DIR[0]}
    assert not unknown, f"the operator writes names the worker never reads: {sorted(unknown)}"


def test_every_name_the_worker_reads_is_declared_and_the_operator_writes_all_of_its_own():
    assert read() == set(Env.OPERATOR) | set(Env.USER)
    assert written() - {contract.CUPY_CACHE_DIR[0]} == set(Env.OPERATOR)
    assert not set(Env.OPERATOR) & set(Env.USER)


def test_the_spec_reaches_the_worker_as_the_same_layout():
    spec = parse_spec({"broker": {"url": "redis://r:6379/0", "globalKeyprefix": "p:", "prioritySteps": [0, 5],
                                  "separator": "::", "unackedKey": "team-unacked"},
                       "queues": ["gpu"], "worker": {"image": "w:1"}})  # fmt: skip
    s = from_env({var["name"]: var["value"] for var in worker_env(spec, "ns", "q") if "value" in var})
    b = spec.broker
    assert (s.global_keyprefix, s.priority_steps, s.separator, s.unacked_key) == (
        b.global_keyprefix, b.priority_steps, b.separator, b.unacked_key
    )  # fmt: skip
    assert s.transport_options["unacked_key"] == "team-unacked"


def test_the_contract_page_names_every_variable_and_no_other():
    page = (Path(__file__).parents[2] / "docs" / "worker-contract.md").read_text()
    section = page.split("## Environment of a worker container", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"GPUFLEET_[A-Z_]+", section)) == set(Env.OPERATOR) | set(Env.USER)
