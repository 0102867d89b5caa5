"""The smoke profile end to end through `dvc repro`, in a copy of the tracked workspace.

Also checks that a second `dvc repro` runs nothing and that the report's files are written."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import OTHER_REPORT

pytestmark = pytest.mark.pipeline


def _run(cmd, cwd, **extra_env):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra_env)
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + res.stderr


def test_smoke_profile_dvc_repro(tmp_path, smoke_runs):
    ws, reads_log = smoke_runs.seq, smoke_runs.reads_log  # `dvc repro` of the smoke profile (conftest.py)
    out = ws / "reports" / "smoke"  # the smoke profile's results; other profiles' are not copied ...
    other = ws / OTHER_REPORT[0]  # ... except one file that must survive the repro
    dvc = str(Path(sys.executable).with_name("dvc"))
    _check_declared_params(ws / "dvc.lock", reads_log)
    for f in ("tables/train_summary.md", "tables/table1_attacks.md",
              "tables/table2_verification.md", "tables/certified.md",
              "tables/ablation_table3.md", "tables/ablation_sweep.md",
              "tables/laplacian_table4.md", "tables/neighbour_stats.json",
              "tables/benchmark_objectives.md", "figures/learning_curves.png",
              "figures/robustness_curves.png", "figures/verification.png",
              "figures/ablation_sweep.png", "figures/neighbour_distances.png",
              "report.md", "attack/hamming_stability.csv", "verify/hamming_stability.csv",
              "metrics/train/hamming_stability_then_pgd.json",
              "figures/gallery.png", "tables/gallery.csv", "figures/table1_attacks.png",
              "figures/table3_ablations.png", "figures/table4_laplacian.png",
              "summary/train/hamming_stability_then_pgd.json", "summary/attack/hamming_stability.json",
              "summary/verify/hamming_stability.json"):
        assert (out / f).stat().st_size > 0, f
    prov = json.loads((out / "provenance.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    assert prov["commit"] == head and prov["params"]["base"]["profile"] == "smoke"
    assert prov["dirty"] == ["params.yaml"]  # written by `params use` after the commit
    t1 = pd.read_csv(out / "tables/table1_attacks.csv")
    assert {"linf_AA", "l2_AA", "AA_square_flag", "train_minutes"} <= set(t1.columns)
    m = json.loads((out / "metrics/attack/hamming_stability.json").read_text())
    assert set(m["autoattack"]["linf"]) == {"square_stronger", "escalated", "escalation_hits",
                                            "blind_escape_hits", "unresolved", "unresolved_positions"}
    assert m["autoattack"]["linf"]["unresolved"] == 0
    assert m["seconds"]["aa_linf"] > 0 and "curves_after_attacks" in m["seconds"]
    report = (out / "report.md").read_text()
    assert "_missing" not in report and "Table 1 analog" in report and "## Adversarial examples" in report
    assert json.loads((out / "summary/attack/hamming_stability.json").read_text())["clean_acc"] == m["clean_acc"]
    assert other.read_text() == OTHER_REPORT[1]
    second = _run([dvc, "repro"], ws)
    assert "Running stage" not in second and "up to date" in second
    # checkpoints/ (scripts/checkpoints.sh): save, lose the DVC cache and every cached output, restore:
    # nothing is left to run
    tools = {"DVC": dvc, "PY": sys.executable}
    _run(["bash", "scripts/checkpoints.sh", "save"], ws, **tools)
    shutil.rmtree(ws / ".dvc" / "cache")
    shutil.rmtree(out / "runs")
    for nb in (out / "executed").glob("*.ipynb"):
        nb.unlink()
    _run(["bash", "scripts/checkpoints.sh", "restore"], ws, **tools)
    assert "up to date" in _run([dvc, "status"], ws)
    # the cross-run notebooks run as they are (JupyterLab): they read the pipeline's results and write
    # a scratch copy under runs/explore, leaving reports/ untouched
    before = {p: p.stat().st_mtime_ns for p in (ws / "reports").rglob("*") if p.is_file()}
    papermill = str(Path(sys.executable).with_name("papermill"))
    for nb in ("40_ablations", "50_laplacian", "90_report"):
        _run([papermill, "--log-level", "WARNING", f"notebooks/{nb}.ipynb", str(tmp_path / f"{nb}.ipynb")], ws)
    explore = (ws / "runs" / "explore" / "report.md").read_text()
    assert "_missing" not in explore and "Table 4 analog" in explore
    assert {p: p.stat().st_mtime_ns for p in (ws / "reports").rglob("*") if p.is_file()} == before


def _check_declared_params(lock_file: Path, reads_log: Path) -> None:
    """Each stage's declared ``params:`` (as resolved in dvc.lock) are exactly what it reads: every read
    lies under a declared key (per stage), and every declared key is read (by some instance of a
    ``foreach`` stage: a read may depend on the run, e.g. the MILP runs) (robustlib.stages.common.ReadLog)."""
    import yaml

    lock = yaml.safe_load(lock_file.read_text())["stages"]
    reads: dict[str, set[str]] = {}
    for line in reads_log.read_text().splitlines():
        rec = json.loads(line)
        reads.setdefault(rec["stage"], set()).add(rec["path"])

    def generic(stage: str, paths) -> set[str]:  # runs.<key> of attack@<key> -> runs.@
        key = stage.partition("@")[2]
        return {".".join("@" if key and part == key else part for part in p.split(".")) for p in paths}

    def under(p: str, d: str) -> bool:
        return p == d or p.startswith(d + ".")

    problems, family_reads, family_declared = [], {}, {}
    for stage, entry in lock.items():
        declared = set((entry.get("params") or {}).get("params.yaml", {}))
        read = reads.get(stage, set())
        if not read:
            problems.append(f"{stage}: no params reads logged")
        undeclared = sorted(r for r in read if not any(under(r, d) for d in declared))
        if undeclared:
            problems.append(f"{stage}: reads undeclared {undeclared}")
        family = stage.partition("@")[0]
        family_reads.setdefault(family, set()).update(generic(stage, read))
        family_declared.setdefault(family, set()).update(generic(stage, declared))
    for family, declared in family_declared.items():
        read = family_reads[family]
        unread = sorted(d for d in declared if not any(under(r, d) or under(d, r) for r in read))
        if unread:
            problems.append(f"{family}: declares unread {unread}")
    assert not problems, "dvc.yaml params differ from what the stages read:\n" + "\n".join(problems)
