"""The smoke profile's MILP chain (``conftest.PAR_TARGETS``: two trainings and the LPIPS network side by side,
the attack, the verify stage with its shards) on two local Dask workers (robustlib.scaleout) against the sequential
`dvc repro` of the whole profile: every stage of the chain runs, both workers take stages, verify shards run as
tasks of their own, `dvc status` of the target is clean afterwards, every output is byte-identical or differs
only where a wall clock decides (``robustlib.scaleout.workspace.compare_outputs``: timings in metrics, tables and
notebooks, and MILP verdicts at their time limit), and dvc.lock has the chain's stages in `dvc repro`'s order with
the same commands, params and paths, and the same hash for every path whose files are byte-identical.

The sequential reference is the `dvc repro` that tests/test_pipeline_smoke.py checks; both start in the
background when collection ends (conftest.py). The whole profile on 1 and 2 workers, compared the same way, is
benchmarks/bench_scaleout.py's (about 12 minutes)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PAR_TARGETS

from robustlib.scaleout.shards import plan_shards
from robustlib.scaleout.workspace import compare_locks, compare_outputs, run

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

DVC = str(Path(sys.executable).with_name("dvc"))


def test_smoke_chain_on_two_workers_matches_dvc_repro(smoke_runs, smoke_reference):
    ref, ws, summary = smoke_reference, smoke_runs.par, smoke_runs.summary
    s = json.loads(summary.read_text())
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    chain = {"train@hamming_stability", "train@standard", "lpips", "attack@hamming_stability",  # the attack's
             "verify@hamming_stability"}  # transfer source is the standard run
    assert set(lock) == {r["stage"] for r in s["results"]} == chain, (sorted(lock), s["results"])
    assert s["workers"] == 2 and len({r["worker"] for r in s["results"]}) == 2
    assert {r["status"] for r in s["results"]} == {"ran"}
    params = yaml.safe_load((ws / "params.yaml").read_text())
    n_shards = len(plan_shards(params, "hamming_stability"))
    assert n_shards >= 2 and len(s["shards"]) == n_shards and {x["status"] for x in s["shards"]} == {"computed"}
    log = (ws / "reports" / "smoke" / "executed" / "30_verify_hamming_stability.ipynb").read_text()
    # the stage merged the shard tasks' blocks, recomputing none
    assert len(re.findall(r"verify: (\d+) of \1 examples loaded from shards", log)) == len(params["verify"]["eps"])
    assert "up to date" in run([DVC, "status", *PAR_TARGETS], ws)
    cmp = compare_outputs(ref, ws, "smoke")
    assert cmp["only_b"] == [] and len(cmp["only_a"]) > 0 and cmp["files"] - len(cmp["only_a"]) > 20, cmp
    assert cmp["unexplained"] == [], cmp  # byte-identical, or equal but for wall-clock fields or MILP time limits
    models = [str(f.relative_to(ws)) for f in ws.joinpath("reports/smoke/runs").rglob("model.pt")]
    assert len(models) == 3  # the two runs and the LPIPS network: equal weights, each
    assert not set(models) & set(cmp["differ"])
    assert compare_locks(ref, ws, cmp["differ"], stages=list(lock)) == []
