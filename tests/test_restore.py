"""The README's steps, followed literally on a fresh clone, restore each committed profile to a clean
`dvc status`: switch profile, put the data in place (`python -m robustlib.data.install`), restore
checkpoints. A stale dependency hash (moved code, a data folder hashed with files no stage reads)
fails here instead of making a newcomer's next `dvc repro` retrain for hours."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]

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
    status = _run([dvc, "status"], clone)
    assert "Data and pipelines are up to date" in status, status[-3000:]
