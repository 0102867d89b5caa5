"""How long a DAG of tasks takes on k identical workers: the critical path, and a list schedule.

``schedule`` simulates what the runner asks of Dask: a worker runs one task at a time; whenever one is
free it starts the ready task (all upstream tasks finished) with the longest remaining path to the end
of the DAG (its "bottom level"; ties: the earlier in the given order). The makespan lies between the
critical path and the total work divided by k; the benchmark reports all three.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    name: str
    minutes: float
    upstream: tuple[str, ...] = ()


def _check(tasks: Iterable[Task]) -> dict[str, Task]:
    by_name: dict[str, Task] = {}
    for t in tasks:
        if t.name in by_name:
            raise ValueError(f"task {t.name!r} appears twice")
        if not t.minutes >= 0:
            raise ValueError(f"task {t.name!r}: minutes must be >= 0, got {t.minutes!r}")
        by_name[t.name] = t
    for t in by_name.values():
        unknown = [u for u in t.upstream if u not in by_name]
        if unknown:
            raise ValueError(f"task {t.name!r} depends on unknown tasks {unknown}")
    return by_name


def topological(tasks: Mapping[str, Task]) -> list[str]:
    """The task names with every task after its upstream tasks (raises on a cycle)."""
    indeg = {n: len(set(t.upstream)) for n, t in tasks.items()}
    dependents: dict[str, list[str]] = {n: [] for n in tasks}
    for n, t in tasks.items():
        for u in set(t.upstream):
            dependents[u].append(n)
    ready = [n for n in tasks if indeg[n] == 0]
    out = []
    while ready:
        n = ready.pop(0)
        out.append(n)
        for d in dependents[n]:
            indeg[d] -= 1
            if indeg[d] == 0:
                ready.append(d)
    if len(out) != len(tasks):
        raise ValueError("the tasks' dependencies contain a cycle")
    return out


def bottom_levels(tasks: Mapping[str, Task]) -> dict[str, float]:
    """For each task, its minutes plus the longest chain of dependents after it."""
    dependents: dict[str, list[str]] = {n: [] for n in tasks}
    for n, t in tasks.items():
        for u in set(t.upstream):
            dependents[u].append(n)
    level: dict[str, float] = {}
    for n in reversed(topological(tasks)):
        level[n] = tasks[n].minutes + max((level[d] for d in dependents[n]), default=0.0)
    return level


def critical_path(tasks: Iterable[Task]) -> tuple[float, list[str]]:
    """The longest chain of dependent tasks: its minutes and its task names, first to last."""
    by_name = _check(tasks)
    if not by_name:
        return 0.0, []
    level = bottom_levels(by_name)
    dependents: dict[str, list[str]] = {n: [] for n in by_name}
    for n, t in by_name.items():
        for u in set(t.upstream):
            dependents[u].append(n)
    node = max((n for n in by_name if not by_name[n].upstream), key=lambda n: level[n])
    path = [node]
    while dependents[node]:
        node = max(dependents[node], key=lambda n: level[n])
        path.append(node)
    return level[path[0]], path


def schedule(tasks: Iterable[Task], workers: int) -> tuple[float, dict[str, tuple[float, float, int]]]:
    """List-schedule the tasks on ``workers`` workers; returns the makespan and each task's (start,
    end, worker)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    by_name = _check(tasks)
    order = {n: i for i, n in enumerate(by_name)}
    level = bottom_levels(by_name)
    waiting = {n: set(t.upstream) for n, t in by_name.items()}
    dependents: dict[str, list[str]] = {n: [] for n in by_name}
    for n, t in by_name.items():
        for u in set(t.upstream):
            dependents[u].append(n)
    ready = [(-level[n], order[n], n) for n, w in waiting.items() if not w]
    heapq.heapify(ready)
    free = list(range(workers))
    running: list[tuple[float, int, str]] = []  # (end, worker, task)
    now, placed = 0.0, {}
    while ready or running:
        while ready and free:
            _, _, n = heapq.heappop(ready)
            w = free.pop(0)
            placed[n] = (now, now + by_name[n].minutes, w)
            heapq.heappush(running, (now + by_name[n].minutes, w, n))
        end, w, n = heapq.heappop(running)
        now = end
        free.append(w)
        free.sort()
        for d in dependents[n]:
            waiting[d].discard(n)
            if not waiting[d]:
                heapq.heappush(ready, (-level[d], order[d], d))
    return max((e for _, e, _ in placed.values()), default=0.0), placed
