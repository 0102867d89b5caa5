"""dvc.yaml, robustlib.pipeline.paths and the notebooks agree with each other and with the conventions."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustlib.pipeline import paths


def _dvc(root):
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def _outs(stage):
    out = []
    for key in ("outs", "metrics", "plots"):
        for o in stage.get(key, []):
            out.append(next(iter(o)) if isinstance(o, dict) else o)
    return out


PROFILE_ROOT = "reports/${base.profile}"  # every stage's output root under DVC (paths.profile_root)


def test_train_stage_outputs_are_the_library_paths(root):
    outs = {o.replace("${key}", "RUN") for o in _outs(_dvc(root)["train"]["do"])}
    from pathlib import Path

    r = Path(PROFILE_ROOT)
    expected = {paths.model_path(r, "RUN"), paths.split_path(r, "RUN"), paths.train_metrics_path(r, "RUN"),
                paths.train_curve_path(r, "RUN"), paths.dvclive_dir(r, "RUN")}
    assert {str(e) for e in expected} <= outs
    assert str(paths.resume_path(r, "RUN")) not in outs  # deleted once the run completes


@pytest.mark.parametrize("stage,fns", [
    ("attack", [paths.attack_results_path, paths.attack_curve_path, paths.attack_metrics_path]),
    ("verify", [paths.verify_results_path, paths.verify_metrics_path]),
])
def test_per_run_stage_outputs_are_the_library_paths(root, stage, fns):
    from pathlib import Path

    outs = {o.replace("${item}", "RUN") for o in _outs(_dvc(root)[stage]["do"])}
    assert {str(f(Path(PROFILE_ROOT), "RUN")) for f in fns} <= outs


def test_lpips_stage_outputs_are_the_library_paths(root):
    from pathlib import Path

    r = Path(PROFILE_ROOT)
    outs = set(_outs(_dvc(root)["lpips"]))
    assert {str(paths.lpips_model_path(r)), str(paths.lpips_metrics_path(r))} <= outs
    assert str(paths.lpips_resume_path(r)) not in outs  # deleted once training completes
    assert str(paths.lpips_model_path(r)) in _dvc(root)["attack"]["do"]["deps"]


def test_gallery_stage_outputs_and_inputs_are_the_library_paths(root):
    """The gallery stage writes the figure and table the report reads (and depends on), and depends on the
    gallery runs' models and splits (by index: check.py allows exactly two runs) and the LPIPS network."""

    r = Path(PROFILE_ROOT)
    body = _dvc(root)["gallery"]
    made = {str(paths.gallery_figure_path(r)), str(paths.gallery_table_path(r))}
    assert made <= set(_outs(body))
    assert made <= set(_dvc(root)["report"]["deps"])
    for i in (0, 1):
        run = f"${{gallery.runs[{i}]}}"
        assert {str(paths.model_path(r, run)), str(paths.split_path(r, run))} <= set(body["deps"])
    assert str(paths.lpips_model_path(r)) in body["deps"] and "${data.path}" in body["deps"]
    assert body["params"] == ["base", "gallery", "attack"]


def test_metrics_are_the_report_summaries(root):
    """`dvc metrics show` reads the report's compact per-run summaries; the train, attack and verify stages'
    detailed metrics files are plain outputs (not cached)."""
    from robustlib.reporting import summary
    from robustlib.reporting.page import PAPER_FIGURES

    r = Path(PROFILE_ROOT)
    stages = _dvc(root)
    metrics = {name: [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("do", stage).get("metrics", [])]
               for name, stage in stages.items()}
    assert metrics["report"] == [str(summary.summary_dir(r, kind)) for kind in summary.KINDS]
    for name, fn, key in (("train", paths.train_metrics_path, "${key}"), ("attack", paths.attack_metrics_path,
                                                                          "${item}"),
                          ("verify", paths.verify_metrics_path, "${item}")):
        body = stages[name]["do"]
        assert not metrics[name], name
        detailed = str(fn(r, key))
        assert {detailed: {"cache": False}} in body["outs"], name
    assert {str(paths.figures_dir(r) / f) for f, _ in PAPER_FIGURES.values()} <= set(_outs(stages["report"]))


def test_every_output_lies_under_the_profile_root(root):
    """Profiles keep their results side by side: every output of every stage is under reports/<profile>/,
    and each stage writes to that root."""
    for name, stage in _dvc(root).items():
        body = stage.get("do", stage)
        assert all(o.startswith(PROFILE_ROOT + "/") for o in _outs(body)), name
        assert f"-p output_root {PROFILE_ROOT}" in body["cmd"], name
    report = _outs(_dvc(root)["report"])
    assert str(paths.report_path(Path(PROFILE_ROOT))) in report
    assert str(paths.provenance_path(Path(PROFILE_ROOT))) in report


def test_each_committed_profile_lock_records_only_that_profile(root):
    """reports/<profile>/dvc.lock (copied by scripts/repro.sh) names the stages the profile's results came
    from, and no other: DVC keeps lock entries of stages that left dvc.yaml, which repro.sh prunes."""
    locks = sorted(root.glob("reports/*/dvc.lock"))
    assert locks
    for lock in locks:
        profile = lock.parent.name
        stages = yaml.safe_load(lock.read_text())["stages"]
        assert "report" in stages, lock
        assert all(f"-p output_root reports/{profile} " in s["cmd"] + " " for s in stages.values()), lock


def _restore_in(ws, root, active, lock_of):
    (ws / "scripts").mkdir(parents=True)
    (ws / "scripts" / "checkpoints.sh").write_text((root / "scripts" / "checkpoints.sh").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump({"base": {"profile": active}}))
    for profile in ("default", "cifar10-cpu"):
        (ws / "reports" / profile).mkdir(parents=True, exist_ok=True)
        (ws / "reports" / profile / "dvc.lock").write_text(yaml.safe_dump(
            {"schema": "2.0",
             "stages": {"report": {"cmd": f"papermill x.ipynb -p output_root reports/{profile} -p y 1"}}}))
    (ws / "dvc.lock").write_text((ws / "reports" / lock_of / "dvc.lock").read_text() + "# local\n")
    env = dict(os.environ, PY=sys.executable, DVC=shutil.which("true"))  # `dvc pull` is not under test here
    subprocess.run(["bash", "scripts/checkpoints.sh", "restore"], cwd=ws, env=env, check=True, capture_output=True)
    return (ws / "dvc.lock").read_text()


def test_restore_takes_the_profile_lock_after_a_switch(tmp_path, root):
    """After `params use P`, `checkpoints.sh restore` pulls by reports/P/dvc.lock (the lock of P's committed
    results), and leaves a dvc.lock that already is P's alone."""
    switched = _restore_in(tmp_path / "a", root, active="cifar10-cpu", lock_of="default")
    assert switched == (tmp_path / "a" / "reports" / "cifar10-cpu" / "dvc.lock").read_text()
    own = _restore_in(tmp_path / "b", root, active="default", lock_of="default")
    assert own.endswith("# local\n")


def test_every_p_value_comes_from_params_or_the_stage(root):
    for name, stage in _dvc(root).items():
        body = stage.get("do", stage)
        for key, value in re.findall(r"-p (\w+) (\S+)", body["cmd"]):
            presentation = (key, value) == ("progress", "False")  # no progress bars in executed notebooks
            assert value.startswith("${") or value in {"params.yaml", PROFILE_ROOT} or presentation, (name, value)


@pytest.mark.parametrize("nb", sorted(p.name for p in (Path(__file__).parents[1] / "notebooks").glob("*.ipynb")))
def test_source_notebooks_are_thin_and_clean(root, nb):
    cells = json.loads((root / "notebooks" / nb).read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code)
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in cells) == 1
    assert not any(re.search(r"^\s*(def|class) ", "".join(c["source"]), re.M) for c in code)


def test_stages_never_import_each_other(root):
    """Stages orchestrate; shared stage inputs live in robustlib.stages.common, logic in the library."""
    import ast

    for f in sorted((root / "robustlib" / "stages").glob("*.py")):
        tree = ast.parse(f.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  and n.module == "robustlib.stages" for a in n.names]
        bad = [m for m in names if m.startswith("robustlib.stages.") and m != "robustlib.stages.common"]
        assert not bad, (f.name, bad)


def test_read_log_records_values_read_not_membership(tmp_path):
    """The params read log behind the pipeline test's declared-params check: leaves read by [] or get()
    (also missing ones), whole sections by items()/values(), key listings as <path>.*; membership and
    len() are not reads; copies are plain dicts."""
    import copy
    import json

    from robustlib.stages.common import ReadLog

    log = tmp_path / "reads.jsonl"
    p = ReadLog({"attack": {"eps": 0.3, "sanity": {"n": 200}}, "runs": {"a": {"x": 1}, "b": {}}, "seed": 0},
                "attack@a", log)
    assert "a" in p["runs"] and len(p["runs"]) == 2  # membership and size only: nothing recorded
    assert not log.exists()
    assert p["attack"]["eps"] == 0.3 and p.get("missing", 5) == 5 and p["seed"] == 0
    assert dict(p["attack"]["sanity"].items()) == {"n": 200}
    assert list(p["runs"]) == ["a", "b"]
    c = copy.deepcopy(p["runs"]["a"])
    assert type(c) is dict and c == {"x": 1}
    got = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["stage"] for r in got} == {"attack@a"}
    assert [r["path"] for r in got] == ["attack.eps", "missing", "seed", "attack.sanity", "runs.*", "runs.a.*",
                                        "runs.a.x"]
