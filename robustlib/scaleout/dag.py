"""The pipeline as DVC sees it: its stages (resolved command, upstream stages), the order in which a
sequential ``dvc repro`` evaluates and records them, and which of them are stale now.

Everything here comes from DVC's own API: ``Repo.index.graph`` (stages and their dependency edges),
``dvc.repo.reproduce.plan_repro`` (``dvc repro``'s evaluation order) and ``Stage.changed`` (``dvc
status``'s test). In DVC's graph an edge ``a -> b`` means that ``a`` depends on an output of ``b``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import chdir
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from dvc.repo import Repo, lock_repo
from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageNode:
    """One pipeline stage as resolved by DVC."""

    name: str  # DVC's address, e.g. ``train@standard``
    cmd: str
    upstream: tuple[str, ...]  # stages whose outputs it depends on
    outs: tuple[str, ...]  # output paths relative to the repository root


@dataclass(frozen=True)
class Plan:
    """The stages to evaluate, in ``dvc repro``'s order, and the stale ones among them."""

    order: tuple[str, ...]
    stages: dict[str, StageNode]
    changed: frozenset[str]  # changed now (``dvc status``)
    stale: frozenset[str]  # changed now, or downstream of a changed stage (may run once upstream has)

    def downstream_depth(self) -> dict[str, int]:
        """For each stage, the number of stages on its longest chain of dependents (a priority: the
        stages that hold up the most work first)."""
        dependents: dict[str, list[str]] = {n: [] for n in self.order}
        for node in self.stages.values():
            for u in node.upstream:
                dependents[u].append(node.name)
        depth: dict[str, int] = {}
        for name in reversed(self.order):  # the order lists dependencies first
            depth[name] = 1 + max((depth[d] for d in dependents[name]), default=0)
        return depth


def plan(root: str | Path, targets: Sequence[str] | None = None) -> Plan:
    """The plan of ``dvc repro [targets]`` run in the repository at ``root`` (default: every stage of its
    dvc.yaml; targets are resolved from ``root``, as DVC resolves them from the working directory)."""
    with chdir(root), Repo(str(root)) as repo, lock_repo(repo):
        graph = get_active_graph(repo.index.graph)
        steps = plan_repro(graph, collect_stages(repo, list(targets or ["dvc.yaml"])))
        missing_cmd = [s.addressing for s in steps if not s.cmd]
        if missing_cmd:
            raise ValueError(f"stages without a command (data sources) are not run by workers: {missing_cmd}; "
                             "use dvc repro / dvc commit for them")
        changed = {s for s in steps if s.changed()}
        stale = set(changed)
        for s in changed:
            stale |= nx.ancestors(graph, s)  # its dependents, direct or not
        stale &= set(steps)
        in_plan = set(steps)
        root_dir = Path(repo.root_dir)
        nodes = {s.addressing: StageNode(
            name=s.addressing, cmd=s.cmd if isinstance(s.cmd, str) else "\n".join(s.cmd),
            upstream=tuple(u.addressing for u in graph.successors(s) if u in in_plan),
            outs=tuple(str(Path(o.fs_path).relative_to(root_dir)) for o in s.outs)) for s in steps}
        return Plan(order=tuple(s.addressing for s in steps), stages=nodes,
                    changed=frozenset(s.addressing for s in changed), stale=frozenset(s.addressing for s in stale))


def families(names: Iterable[str]) -> dict[str, list[str]]:
    """Stage names grouped by their dvc.yaml entry (``train@standard`` -> ``train``)."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(n.partition("@")[0], []).append(n)
    return out
