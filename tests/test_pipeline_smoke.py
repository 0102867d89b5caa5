"""The smoke profile end to end through `dvc repro`, in a copy of the tracked workspace.

Also checks that a second `dvc repro` runs nothing and that the report's files are written."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pipeline


def _run(cmd, cwd):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + res.stderr


def test_smoke_profile_dvc_repro(root, tmp_path):
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.decode().split("\0")
    ws = tmp_path / "ws"
    for f in filter(None, files):
        src = root / f
        if src.is_file() and not f.startswith(("reports/", "runs/")) and f != "dvc.lock":
            (ws / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ws / f)
    (ws / "reports" / "executed").mkdir(parents=True, exist_ok=True)
    _run(["git", "init", "-q"], ws)
    _run(["git", "add", "-A"], ws)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workspace copy"], ws)
    dvc = str(Path(sys.executable).with_name("dvc"))
    _run([sys.executable, "-m", "robustlib.params", "use", "smoke"], ws)
    _run([sys.executable, "-m", "robustlib.params", "check"], ws)
    _run([dvc, "repro"], ws)
    for f in ("reports/tables/train_summary.md", "reports/tables/train_summary.csv",
              "reports/figures/learning_curves.png", "reports/report.md",
              "reports/metrics/train/standard.json", "reports/metrics/train/hamming_stability.json"):
        assert (ws / f).stat().st_size > 0, f
    second = _run([dvc, "repro"], ws)
    assert "Running stage" not in second and "up to date" in second
