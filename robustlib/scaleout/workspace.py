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
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
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
    date = "2026-01-01T00:00:00+0000"  # the same files give the same commit in every copy
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workspace copy"], dest,
        GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    run([sys.executable, "-m", "robustlib.pipeline", "use", profile], dest)
    return dest


def output_files(ws: Path, profile: str) -> dict[str, str]:
    """sha256 of every file under ``reports/<profile>/`` (relative path -> digest), but the .gitignore
    files DVC writes beside cached outputs (bookkeeping: they list whichever of them exist)."""
    base = Path(ws) / "reports" / profile
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file() and p.name != ".gitignore"}


TIMING_KEYS = {"minutes", "seconds", "train_minutes", "verify_minutes", "aa_seconds", "duration", "start_time",
               "end_time", "median_seconds", "p90_seconds", "mean_seconds", "timestamp"}
# rendered for reading, with wall-clock times in them (papermill's cell outputs and timings, tables and text
# that print minutes, figures of those): compared by presence only
PRESENTATION = (".ipynb", ".md", ".png")
# what a MILP's time limit decides (its verdict, and what is counted from the verdicts)
MILP_DERIVED = ("/metrics/verify/", "/summary/verify/", "/tables/table2_verification.csv")


def _is_timing(key: str) -> bool:
    """A JSON key that holds a wall-clock time, also per eps (the summaries' ``median_seconds@8/255``)."""
    base = key.split("@")[0]
    return base in TIMING_KEYS or base.endswith(("_seconds", "_minutes"))


def _strip_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if not _is_timing(k)}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def normalized(path: Path, ws: Path) -> Any:
    """The content of ``path`` (in workspace ``ws``) without wall-clock fields: JSON keys named for times,
    ``seconds``/``minutes`` columns of CSV tables, a series named for seconds (dvclive), and what names the
    workspace itself: a checkpoint's absolute paths (a finetune records its parent's), provenance's commit."""
    if "seconds" in path.name:
        return None
    if path.suffix == ".json":
        obj = _strip_timing(json.loads(path.read_text()))
        if path.name == "provenance.json":
            obj.pop("commit", None)  # the workspace copy's own git commit
        return obj
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        return df.drop(columns=[c for c in df.columns if "seconds" in c or "minutes" in c]).to_csv(index=False)
    if path.suffix == ".pt":
        blob = torch.load(path, map_location="cpu", weights_only=True)
        weights = {k: v.numpy().tobytes() for k, v in blob.pop("state_dict").items()}
        meta = json.dumps(blob, sort_keys=True, default=str)
        return weights, re.sub(r"/[^\s'\",]*?/reports/", "<workspace>/reports/", meta)  # absolute -> workspace
    return path.read_bytes()


def milp_timeouts(a: Path, b: Path, rel: str) -> tuple[list[str], bool]:
    """Examples of a per-example verify table on which either run's MILP hit its time limit (wall-clock
    dependent), and whether the tables agree on every other example (all columns but ``seconds``)."""
    ta, tb = pd.read_csv(Path(a) / rel), pd.read_csv(Path(b) / rel)
    if list(ta.columns) != list(tb.columns) or len(ta) != len(tb) or "reason" not in ta.columns:
        return [], False
    hit = (ta["reason"] == "timeout") | (tb["reason"] == "timeout")
    keep = [c for c in ta.columns if c != "seconds"]
    same = ta.loc[~hit, keep].reset_index(drop=True).compare(tb.loc[~hit, keep].reset_index(drop=True)).empty
    return [f"{i}@{e}" for i, e in zip(ta.loc[hit, "index"], ta.loc[hit, "eps"], strict=True)], same


def compare_outputs(a: Path, b: Path, profile: str) -> dict[str, Any]:
    """Compare the profile's outputs of two workspaces. Every file is byte-identical, or equal once
    wall-clock fields are removed (``normalized``), or rendered for reading (``PRESENTATION``: compared by
    presence), or a verify table that agrees except on examples whose MILP hit its time limit in either run
    (and the verify metrics and Table 2 counted from them); anything else is listed in ``unexplained``."""
    fa, fb = output_files(a, profile), output_files(b, profile)
    differ = sorted(f for f in set(fa) & set(fb) if fa[f] != fb[f])
    out: dict[str, Any] = {"files": len(fa), "only_a": sorted(set(fa) - set(fb)), "only_b": sorted(set(fb) - set(fa)),
                           "identical": sum(fa[f] == fb.get(f) for f in fa), "differ": differ,
                           "equal_without_wall_clock": [], "presentation": [], "milp_time_limits": {},
                           "unexplained": []}
    rest = []
    for f in differ:
        if f.endswith(PRESENTATION):
            out["presentation"].append(f)
        elif normalized(Path(a) / f, a) == normalized(Path(b) / f, b):
            out["equal_without_wall_clock"].append(f)
        elif f"/{profile}/verify/" in f and f.endswith(".csv"):
            hit, same = milp_timeouts(a, b, f)
            if same and hit:
                out["milp_time_limits"][f] = hit
            else:
                out["unexplained"].append(f)
        else:
            rest.append(f)
    for f in rest:  # counted from verdicts: explained only where a verify table differed by time limits alone
        if any(m in f"/{f}" for m in MILP_DERIVED) and out["milp_time_limits"]:
            out["milp_time_limits"].setdefault("derived", []).append(f)
        else:
            out["unexplained"].append(f)
    return out


def lock_stages(ws: Path) -> dict[str, Any]:
    """dvc.lock's stages (in file order)."""
    return yaml.safe_load((Path(ws) / "dvc.lock").read_text())["stages"]


def compare_locks(a: Path, b: Path, differ: list[str], stages: list[str] | None = None) -> list[str]:
    """Differences between two workspaces' dvc.lock that the differing output files (``differ``, from
    ``compare_outputs``) do not explain: stage names and order, commands, params, dependency and output
    paths must be equal, and so must every hash of a path that no differing file lies under. ``stages``:
    compare these stages only, in any order (a run of some targets, whose `dvc repro` order is the targets',
    against a run of the whole pipeline)."""
    la, lb = lock_stages(a), lock_stages(b)
    if stages is not None:
        la, lb = ({k: v for k, v in lock.items() if k in stages} for lock in (la, lb))
    problems = []
    if (list(la) if stages is None else set(la)) != (list(lb) if stages is None else set(lb)):
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
