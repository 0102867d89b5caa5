"""The smoke profile on two local Dask workers (robustlib.scaleout) against a sequential `dvc repro`:
every stage runs, both workers take stages, verify shards run as tasks of their own, `dvc status` is
clean afterwards, every output is byte-identical or differs only where a wall clock decides
(``robustlib.scaleout.workspace.compare_outputs``: timings in metrics, tables and notebooks, and MILP
verdicts at their time limit), and dvc.lock has the same stages in the same order with the same commands,
params and paths, and the same hash for every path whose files are byte-identical.

The sequential reference is the `dvc repro` that tests/test_pipeline_smoke.py checks; both runs are made at
the same time by the ``smoke_runs`` fixture (conftest.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from robustlib.scaleout.shards import plan_shards
from robustlib.scaleout.workspace import compare_locks, compare_outputs, run

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

DVC = str(Path(sys.executable).with_name("dvc"))


def test_smoke_profile_on_two_workers_matches_dvc_repro(smoke_runs, smoke_reference):
    ref, ws, summary = smoke_reference, smoke_runs.par, smoke_runs.summary  # run at the same time (conftest.py)
    s = json.loads(summary.read_text())
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert s["workers"] == 2 and len({r["worker"] for r in s["results"]}) == 2
    assert {r["status"] for r in s["results"]} == {"ran"} and len(s["results"]) == len(lock) == s["stages"]
    params = yaml.safe_load((ws / "params.yaml").read_text())
    n_shards = sum(len(plan_shards(params, r)) for r in params["verify"]["milp_runs"])
    assert n_shards >= 4 and len(s["shards"]) == n_shards and {x["status"] for x in s["shards"]} == {"computed"}
    for run_name in params["verify"]["milp_runs"]:  # the stage merged the shard tasks' blocks, recomputing none
        log = (ws / "reports" / "smoke" / "executed" / f"30_verify_{run_name}.ipynb").read_text()
        assert len(re.findall(r"verify: (\d+) of \1 examples loaded from shards", log)) == len(params["verify"]["eps"])
    assert "Data and pipelines are up to date" in run([DVC, "status"], ws)
    cmp = compare_outputs(ref, ws, "smoke")
    assert cmp["only_a"] == [] and cmp["only_b"] == [] and cmp["files"] > 100
    assert cmp["unexplained"] == [], cmp  # byte-identical, or equal but for wall-clock fields or MILP time limits
    assert cmp["identical"] > cmp["files"] // 3
    models = [str(f.relative_to(ws)) for f in ws.joinpath("reports/smoke/runs").rglob("model.pt")]
    assert len(models) >= len(params["run_names"]) + 1  # every run, the LPIPS network (and any sweep cell)
    assert not set(models) & set(cmp["presentation"] + list(cmp["milp_time_limits"]))  # equal weights, every one
    assert compare_locks(ref, ws, cmp["differ"]) == []
