"""Copies of the tracked workspace for the scale-out tests and benchmark, and comparisons of their outputs.

``copy_workspace`` lays out what ``tests/test_pipeline_smoke.py`` runs the smoke profile in: the tracked
and untracked-not-ignored files without results (reports/, runs/, checkpoints/, dvc.lock), committed in a
fresh git repository, with the profile written to params.yaml.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

RESULT_PREFIXES = ("reports/", "runs/", "checkpoints/")


def tool_env(**extra: str) -> dict[str, str]:
    """The environment with this interpreter's folder (dvc, papermill) first on PATH."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra)


def run(cmd: list[str], cwd: Path, **extra: str) -> str:
    """Run ``cmd`` in ``cwd``; raise with its output's tail if it fails."""
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=tool_env(**extra))
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res.stdout + res.stderr


def copy_workspace(root: str | Path, dest: str | Path, profile: str) -> Path:
    """A fresh git workspace at ``dest`` from ``root``'s tracked files (no results), on ``profile``."""
    root, dest = Path(root), Path(dest)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = root / f
        if src.is_file() and not f.startswith(RESULT_PREFIXES) and f != "dvc.lock":
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workspace copy"], dest)
    run([sys.executable, "-m", "robustlib.params", "use", profile], dest)
    return dest


def output_files(ws: Path, profile: str) -> dict[str, str]:
    """sha256 of every file under ``reports/<profile>/`` (relative path -> digest)."""
    base = Path(ws) / "reports" / profile
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file()}


TIMING_KEYS = {"minutes", "seconds", "train_minutes", "verify_minutes", "aa_seconds", "duration", "start_time",
               "end_time", "median_seconds", "p90_seconds", "mean_seconds", "lpips_minutes", "timestamp"}


def _strip_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS and not k.endswith("_seconds")
                and not k.endswith("_minutes")}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def normalized(path: Path) -> Any:
    """The content of ``path`` with its wall-clock fields removed: JSON keys named for times, papermill's
    execution times in notebooks, ``seconds``/``minutes`` columns of CSV tables."""
    suffix = path.suffix
    if suffix == ".json":
        return _strip_timing(json.loads(path.read_text()))
    if suffix == ".ipynb":
        nb = json.loads(path.read_text())
        nb.get("metadata", {}).pop("papermill", None)
        for cell in nb.get("cells", []):
            cell.get("metadata", {}).pop("papermill", None)
            cell.get("metadata", {}).pop("execution", None)
        return nb
    if suffix == ".csv":
        import pandas as pd

        df = pd.read_csv(path)
        return df.drop(columns=[c for c in df.columns if "seconds" in c or "minutes" in c]).to_csv(index=False)
    return path.read_bytes()


def compare_outputs(a: Path, b: Path, profile: str) -> dict[str, Any]:
    """Compare the profile's outputs of two workspaces: files only in one, byte-identical files, and
    files that differ in bytes and whether they agree once wall-clock fields are removed."""
    fa, fb = output_files(a, profile), output_files(b, profile)
    differ = sorted(f for f in set(fa) & set(fb) if fa[f] != fb[f])
    return {"files": len(fa), "only_a": sorted(set(fa) - set(fb)), "only_b": sorted(set(fb) - set(fa)),
            "identical": sum(fa[f] == fb.get(f) for f in fa), "differ": differ,
            "differ_beyond_timing": [f for f in differ if normalized(Path(a) / f) != normalized(Path(b) / f)]}


def lock_stages(ws: Path) -> dict[str, Any]:
    """dvc.lock's stages (in file order)."""
    return yaml.safe_load((Path(ws) / "dvc.lock").read_text())["stages"]


def compare_locks(a: Path, b: Path, differ: list[str]) -> list[str]:
    """Differences between two workspaces' dvc.lock that the differing output files (``differ``, from
    ``compare_outputs``) do not explain: stage names and order, commands, params, dependency and output
    paths must be equal, and so must every hash of a path that no differing file lies under."""
    la, lb = lock_stages(a), lock_stages(b)
    problems = []
    if list(la) != list(lb):
        problems.append(f"stages or their order differ: {list(la)} vs {list(lb)}")
    for name in set(la) & set(lb):
        ea, eb = la[name], lb[name]
        for key in ("cmd", "params"):
            if ea.get(key) != eb.get(key):
                problems.append(f"{name}: {key} differs")
        for key in ("deps", "outs"):
            pa = {e["path"]: e for e in ea.get(key, [])}
            pb = {e["path"]: e for e in eb.get(key, [])}
            if set(pa) != set(pb):
                problems.append(f"{name}: {key} paths differ")
                continue
            for path, e in pa.items():
                explained = any(f == path or f.startswith(path.rstrip("/") + "/") for f in differ)
                if not explained and (e.get("md5"), e.get("size"), e.get("nfiles")) != (
                        pb[path].get("md5"), pb[path].get("size"), pb[path].get("nfiles")):
                    problems.append(f"{name}: {key} {path} differs in hash though its files are identical")
    return problems
