"""When each fleet is due, and what it carries between ticks: the tick's thread alone holds it. Pure.

A heap of (next_probe, fleet): a tick pops the due ones, where a pass over thousands of fleets at every tick cost
more than probing the few that were due. A fleet's state names its own next probe; a heap entry that no longer
matches it (the state moved on) is stale and skipped.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

from gpufleet.model import FleetState

Key = tuple[str, str]


class Schedule:
    def __init__(self) -> None:
        self._states: dict[Key, FleetState] = {}
        self._heap: list[tuple[float, Key]] = []

    def put(self, key: Key, state: FleetState) -> None:
        """`state` is the fleet's from now on; it falls due at its next_probe (never, for math.inf)."""
        self._states[key] = state
        if state.next_probe < math.inf:
            heapq.heappush(self._heap, (state.next_probe, key))

    def __getitem__(self, key: Key) -> FleetState:
        return self._states[key]

    def get(self, key: Key) -> FleetState | None:
        return self._states.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def __iter__(self) -> Iterator[Key]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    @property
    def states(self) -> dict[Key, FleetState]:
        """Every fleet's state, for the plan to read (not to change)."""
        return self._states

    def drop(self, key: Key) -> FleetState | None:
        """Forget a fleet: its heap entries are left to be skipped."""
        return self._states.pop(key, None)

    def clear(self) -> None:
        self._states.clear()
        self._heap.clear()

    def pop_due(self, now: float, limit: int) -> list[Key]:
        """The fleets due by `now`, each once, in the order they fell due: at most `limit` of them."""
        due: dict[Key, None] = {}
        while self._heap and self._heap[0][0] <= now and len(due) < limit:
            at, key = heapq.heappop(self._heap)
            state = self._states.get(key)
            if state is not None and state.next_probe == at:
                due[key] = None
        return list(due)

    def wait(self, started: float, now: float) -> float:
        """Seconds from `now` until the next tick, for a tick that started at `started`: none when fleets are
        left due by its limit, a second when no fleet will fall due (a new queue wakes the ticker)."""
        at = self.next_due()
        if at is None:
            return 1.0
        return 0.0 if at <= started else max(0.05, at - now)

    def next_due(self) -> float | None:
        """When the next fleet falls due (None: none will); stale entries are dropped on the way."""
        while self._heap:
            at, key = self._heap[0]
            state = self._states.get(key)
            if state is not None and state.next_probe == at:
                return at
            heapq.heappop(self._heap)
        return None
