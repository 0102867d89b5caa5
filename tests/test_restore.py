"""The README's steps, followed literally on a fresh clone, restore each committed profile to a clean
`dvc status` for every stage with committed results: switch profile, put the data in place
(`python -m robustlib.data.install`), restore checkpoints. A stale dependency hash (moved code, a data folder
hashed with files no stage reads) fails here instead of making a newcomer's next `dvc repro` retrain for hours."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]

UNFINISHED = ("sweep_",)  # issue 24's weight sweeps: their stages run across sittings (docs/measurements.md)
SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def _run(cmd, cwd, **env):
    full = dict(os.environ, PYTHONPATH=str(cwd), **env)
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of the committed HEAD (what CI and a newcomer get)."""
    ws = tmp_path_factory.mktemp("clone") / "ws"
    subprocess.run(["git", "clone", "-q", str(Path(__file__).resolve().parents[1]), str(ws)], check=True)
    return ws


@pytest.mark.parametrize("profile", ["default", "cifar10-cpu"])
def test_readme_steps_restore_a_clean_status(clone, profile):
    dvc = str(Path(sys.executable).with_name("dvc"))
    if not (clone / "reports" / profile / "dvc.lock").exists():
        pytest.skip(f"{profile} has no committed results")
    _run([sys.executable, "-m", "robustlib.pipeline", "use", profile], clone)
    if profile == "cifar10-cpu":
        if not (SHARED_CIFAR10 / "test.npz").exists():
            pytest.skip(f"CIFAR-10 is not at {SHARED_CIFAR10}")
        _run([sys.executable, "-m", "robustlib.data.install", "cifar10", str(SHARED_CIFAR10)], clone)
    _run([sys.executable, "-m", "robustlib.pipeline", "check"], clone)
    _run(["bash", "scripts/checkpoints.sh", "restore"], clone, DVC=dvc, PY=sys.executable)
    status = _run([dvc, "status", "--json"], clone)
    pending = set(json.loads(status[status.index("{"):status.rindex("}") + 1]))
    committed = set(yaml.safe_load((clone / "reports" / profile / "dvc.lock").read_text())["stages"])
    unfinished = pending - committed  # stages never run yet (work in progress): listed, not stale
    in_progress = _in_progress(yaml.safe_load((clone / "params.yaml").read_text()))
    assert all(s.startswith(UNFINISHED) or s in in_progress for s in unfinished), sorted(unfinished)
    stale = sorted(pending & committed - _downstream(clone, unfinished))
    assert not stale, f"{profile}: stages with committed results are not up to date after restore: {stale}"


def _in_progress(params: dict) -> set[str]:
    """The stages of the runs that a sweep adds after its selection (``sweeps.<name>.seeded_runs``): trained,
    attacked and verified across sittings like the sweep's own stages."""
    runs = {r for spec in (params.get("sweeps") or {}).values() for r in spec.get("seeded_runs") or []}
    return {f"{kind}@{r}" for r in runs for kind in ("train", "attack", "verify")}


def _downstream(clone: Path, stages: set[str]) -> set[str]:
    """The stages that depend, directly or not, on any of ``stages`` (DVC's graph): they cannot be brought up to
    date before those have run (e.g. the report while a seeded run is unfinished)."""
    import networkx as nx
    from dvc.repo import Repo

    with contextlib.chdir(clone), Repo(str(clone)) as repo:  # DVC reads params.yaml from the working directory
        graph = repo.index.graph  # edges: stage -> the stages it depends on
        by_name = {s.addressing: s for s in graph.nodes}
        return {a.addressing for s in stages if s in by_name for a in nx.ancestors(graph, by_name[s])}
