"""robustlib.scaleout: settings, the DAG from DVC, a toy DVC pipeline on Dask workers (dvc.lock as
`dvc repro` writes it, a worker killed mid-stage, a failing stage), verify shards merged into the same
results as one process, the critical-path simulation, Slurm job scripts, and that no stage depends on it."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from robustlib.scaleout import cluster, config, simulate
from robustlib.scaleout.config import ScaleoutConfigError

DVC = str(Path(sys.executable).with_name("dvc"))


# ---------------------------------------------------------------------------------------------- settings
def test_every_profile_resolves(root):
    for profile in sorted(p.stem for p in (root / "profiles").glob("*.yaml")):
        cfg = config.load(root, profile)
        assert cfg.workers >= 1 and cfg.threads_per_worker >= 1 and cfg.memory_per_worker >= 2**28
    paper = config.load(root, "paper")
    assert (paper.gpus_per_worker, paper.threads_per_worker) == (1, 8)
    assert config.load(root, "smoke").memory_per_worker == 4 * 2**30


GOOD = {"workers": 2, "threads_per_worker": 1, "memory_per_worker": "1GiB", "gpus_per_worker": "auto",
        "retries": 1, "verify_shards": True}


@pytest.mark.parametrize("override,message", [
    ({"worker": 2}, "unknown key"),
    ({"workers": 0}, "workers must be an integer >= 1"),
    ({"threads_per_worker": 1.5}, "threads_per_worker must be an integer"),
    ({"memory_per_worker": "lots"}, "memory_per_worker must be a size"),
    ({"memory_per_worker": "1MiB"}, "at least 256MiB"),
    ({"gpus_per_worker": -1}, "gpus_per_worker"),
    ({"retries": True}, "retries must be an integer"),
    ({"verify_shards": "yes"}, "verify_shards must be true or false"),
    ({"slurm": {"partition": "gpu"}}, "unknown key"),
    ({"slurm": {"job_extra_directives": "--gres=gpu:1"}}, "job_extra_directives must be a list"),
])
def test_impossible_settings_are_named(override, message):
    with pytest.raises(ScaleoutConfigError, match=message):
        config.resolve({"default": {**GOOD, **override}}, "smoke", {"smoke"})


def test_profile_entries_must_name_profiles():
    with pytest.raises(ScaleoutConfigError, match="'smok' is no profile"):
        config.resolve({"default": GOOD, "smok": {"workers": 1}}, "smoke", {"smoke"})
    cfg = config.resolve({"default": GOOD, "smoke": {"workers": 3}}, "smoke", {"smoke"})
    assert cfg.workers == 3 and cfg.gpus(0) == 0 and cfg.gpus(2) == 1


def test_training_tasks_ask_for_a_gpu_only_when_workers_hold_one():
    assert cluster.train_resources("train@standard", 1) == {"GPU": 1}
    assert cluster.train_resources("finetune@x", 1) == {"GPU": 1} == cluster.train_resources("lpips", 1)
    assert cluster.train_resources("attack@standard", 1) is None
    assert cluster.train_resources("train@standard", 0) is None


def test_local_workers_each_see_their_own_gpu(tmp_path):
    cfg = config.resolve({"default": {**GOOD, "gpus_per_worker": 1}}, "smoke", {"smoke"})
    with cluster.local_cluster(cfg, workers=3, gpus=2) as cl:
        options = [cl.worker_spec[i]["options"] for i in range(3)]
    assert [o["env"]["CUDA_VISIBLE_DEVICES"] for o in options] == ["0", "1", "0"]
    assert all(o["resources"] == {"GPU": 1} and o["nthreads"] == 1 for o in options)
    assert all(o["memory_limit"] == 2**30 and o["env"]["OMP_NUM_THREADS"] == "1" for o in options)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cluster.local_cluster(cfg, workers=1, gpus=0)


def test_slurm_job_script_holds_the_profile_resources(root, tmp_path):
    from dask_jobqueue import SLURMCluster

    cfg = config.resolve({"default": {**GOOD, "threads_per_worker": 8, "memory_per_worker": "48GiB",
                                      "gpus_per_worker": 1, "slurm": {"walltime": "72:00:00", "queue": "gpu",
                                                                      "log_directory": str(tmp_path)}}},
                         "paper", {"paper"})
    with SLURMCluster(**cluster.slurm_kwargs(cfg, root)) as c:
        script = c.job_script()
    for line in ("#SBATCH --cpus-per-task=8", "#SBATCH --mem=48G", "#SBATCH --gres=gpu:1", "#SBATCH -t 72:00:00",
                 "#SBATCH -p gpu", f"cd {root}", "export OMP_NUM_THREADS=8"):
        assert line in script, line
    assert re.search(r"dask_worker .* --nthreads 1 .*--memory-limit 48\.00GiB .*--resources GPU=1", script), script
    cpu = config.resolve({"default": {**GOOD, "gpus_per_worker": "auto", "slurm": {"log_directory": str(tmp_path)}}},
                         "smoke", {"smoke"})
    with SLURMCluster(**cluster.slurm_kwargs(cpu, root)) as c:
        script = c.job_script()
    assert "--gres" not in script and "--resources" not in script and "#SBATCH --cpus-per-task=1" in script


# ----------------------------------------------------------------------------------- isolation from DVC
def test_no_stage_depends_on_scaleout(root):
    """Changing robustlib.scaleout or scaleout.yaml must never make a stage stale."""
    text = (root / "dvc.yaml").read_text()
    stages = yaml.safe_load(text)["stages"]
    deps = [d for s in stages.values() for d in (s.get("do", s).get("deps") or [])]
    assert deps and not any("scaleout" in d for d in deps)
    assert not any(Path("robustlib/scaleout").is_relative_to(d.rstrip("/")) for d in deps if not d.startswith("$"))
    pattern = re.compile(r"robustlib\.scaleout|from robustlib import .*scaleout|scaleout\.yaml")
    sources = [p for p in (root / "robustlib").rglob("*.py") if "scaleout" not in p.parts]
    sources += list((root / "notebooks").glob("*.ipynb"))
    assert sources and not [str(p) for p in sources if pattern.search(p.read_text())]
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert "scaleout" not in params  # robustlib.pipeline.params rejects sections no stage reads


# ------------------------------------------------------------------------------- a toy DVC pipeline
TOY = """stages:
  make:
    foreach: ${items}
    do:
      cmd: sleep 1 && mkdir -p out && echo "${item} $(cat src.txt)" > out/make_${item}.txt
      deps:
        - src.txt
      outs:
        - out/make_${item}.txt
  join:
    cmd: %s cat out/make_one.txt out/make_two.txt > out/join.txt
    deps:
      - out/make_one.txt
      - out/make_two.txt
    outs:
      - out/join.txt
  tail:
    cmd: wc -c out/make_three.txt > out/tail.txt && echo 1 > out/tail.json
    deps:
      - out/make_three.txt
    outs:
      - out/tail.txt:
          cache: false
      - out/tail.json:
          cache: false
          persist: true
"""


def _toy(path: Path, join_prefix: str = "") -> Path:
    path.mkdir(parents=True)
    (path / "profiles").mkdir()
    (path / "profiles" / "toy.yaml").write_text("base: {}\n")
    (path / "params.yaml").write_text("base: {profile: toy, threads: 1}\nitems: [one, two, three]\n")
    (path / "scaleout.yaml").write_text(yaml.safe_dump({"default": {**GOOD, "retries": 2, "verify_shards": False}}))
    (path / "dvc.yaml").write_text(TOY % join_prefix)
    (path / "src.txt").write_text("hello\n")
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "toy"]):
        subprocess.run(cmd, cwd=path, check=True, capture_output=True)
    return path


def _files(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted((ws / "out").rglob("*")) if p.is_file()}


def _status_clean(ws: Path) -> bool:
    res = subprocess.run([DVC, "status"], cwd=ws, capture_output=True, text=True, check=True)
    return "up to date" in res.stdout


def _parallel(ws: Path, monkeypatch, workers: int = 2) -> dict:
    from robustlib.scaleout import runner

    monkeypatch.chdir(ws)
    return runner.reproduce(ws, workers=workers)


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory) -> Path:
    ws = _toy(tmp_path_factory.mktemp("toy") / "seq")
    res = subprocess.run([DVC, "repro", "-q"], cwd=ws, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return ws


def test_toy_pipeline_on_two_workers_writes_dvc_repro_s_lock(toy_reference, tmp_path, monkeypatch):
    from robustlib.scaleout import dag

    ws = _toy(tmp_path / "par")
    plan = dag.plan(ws)
    assert plan.order == tuple(yaml.safe_load((toy_reference / "dvc.lock").read_text())["stages"])  # dvc repro's order
    assert plan.stages["join"].upstream == ("make@one", "make@two") and plan.stale == set(plan.order)
    out = _parallel(ws, monkeypatch)
    assert {r["stage"]: r["status"] for r in out["results"]} == dict.fromkeys(plan.order, "ran")
    assert len({r["worker"] for r in out["results"]}) == 2  # both workers took stages
    assert (ws / "dvc.lock").read_bytes() == (toy_reference / "dvc.lock").read_bytes()
    assert _files(ws) == _files(toy_reference) and _status_clean(ws)
    again = _parallel(ws, monkeypatch)  # nothing is stale: no cluster, nothing runs
    assert again["stale"] == [] and again["results"] == []
    (ws / "src.txt").write_text("hello\n")  # same content: still up to date
    (ws / "out" / "tail.txt").unlink()  # a missing output: that stage alone runs again
    again = _parallel(ws, monkeypatch, workers=1)
    assert again["stale"] == ["tail"] and [r["status"] for r in again["results"]] == ["ran"]
    assert (ws / "dvc.lock").read_bytes() == (toy_reference / "dvc.lock").read_bytes()


def test_a_killed_worker_loses_only_its_task(toy_reference, tmp_path, monkeypatch):
    # join kills the worker running it (its shell's parent) the first time; the scheduler re-runs it elsewhere
    ws = _toy(tmp_path / "par", join_prefix="if [ ! -e ../killed ]; then touch ../killed; kill -9 $PPID; sleep 2; "
                                            "exit 1; fi &&")
    out = _parallel(ws, monkeypatch)
    assert (tmp_path / "killed").exists()
    assert {r["stage"]: r["status"] for r in out["results"]}["join"] == "ran"
    lock, ref = yaml.safe_load((ws / "dvc.lock").read_text()), yaml.safe_load((toy_reference / "dvc.lock").read_text())
    ref["stages"]["join"]["cmd"] = lock["stages"]["join"]["cmd"]  # the command differs by the kill prefix
    assert lock == ref and _files(ws) == _files(toy_reference) and _status_clean(ws)


def test_a_failing_stage_fails_its_dependents_and_the_rest_is_recorded(tmp_path, monkeypatch):
    from robustlib.scaleout import runner

    ws = _toy(tmp_path / "par", join_prefix="exit 3 &&")
    monkeypatch.chdir(ws)
    with pytest.raises(runner.ParallelReproError, match=r"\['join'\]"):
        runner.reproduce(ws, workers=2, summary=tmp_path / "summary.json")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["failed"]) == {"join"} and "3" in summary["failed"]["join"]
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"make@one", "make@two", "make@three", "tail"}  # everything but the failed stage


# ----------------------------------------------------------------------------------------- verify shards
def test_shards_computed_apart_merge_into_the_single_process_results(tmp_path, monkeypatch):
    import robustlib.verification.shards as V
    from robustlib.attacks.gradient import pgd
    from robustlib.models import build_model
    from robustlib.scaleout import shards
    from robustlib.threat import ThreatModel

    torch.manual_seed(0)
    model = build_model("mlp", image_size=4, hidden=(16, 16), num_classes=3).eval()
    x = torch.rand(8, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps, seed = 0.12, 0
    x_adv = pgd(model, x, y, ThreatModel("linf", eps), steps=3, generator=torch.Generator().manual_seed(seed)).points
    vp = {"time_limit": 10.0, "bounds": "linear", "solver": "highs", "margin_atol": 1e-4, "margin_rtol": 1e-6,
          "margin_float32": False, "shard_size": 3}
    args = dict(time_limit=10.0, counterexamples=x_adv, bounds="linear", solver="highs", margin_atol=1e-4,
                margin_rtol=1e-6, margin_float32=False, seed=seed, progress=False)
    single = V.verify(model, x, y, eps, "linf", **args)
    # the key under which verify itself saves shards is the one the shard tasks use
    V.verify(model, x, y, eps, "linf", **args, shard_dir=tmp_path / "own", shard_size=3)
    key = shards.shard_key(model, x, y, x_adv, eps, vp, seed)
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == [f"{key[:24]}-{s:07d}.pt" for s in (0, 3, 6)]
    for start in (6, 0, 3):  # the tasks may finish in any order
        assert shards.compute_block(model, x, y, x_adv, eps, vp, seed, start, tmp_path / "tasks") is not None
    assert shards.compute_block(model, x, y, x_adv, eps, vp, seed, 9, tmp_path / "tasks") is None
    assert len(list((tmp_path / "tasks").iterdir())) == 3  # 3 + 3 + 2 examples

    def never(*a, **k):
        raise AssertionError("the stage recomputed an example that a shard task had computed")

    monkeypatch.setattr(V, "verify_one", never)  # the stage's call must only load and merge
    merged = V.verify(model, x, y, eps, "linf", **args, shard_dir=tmp_path / "tasks", shard_size=3)
    fields = ("verdict", "method", "reason", "margin", "tol", "unstable", "stable", "detail")

    def rows(results):  # nan (no margin) compares equal to nan here
        return [[None if isinstance(v, float) and math.isnan(v) else v for v in (getattr(r, f) for f in fields)]
                for r in results]

    assert rows(merged) == rows(single)
    assert all((a.counterexample is None) == (b.counterexample is None) for a, b in zip(merged, single, strict=True))
    assert {(r.verdict, r.method) for r in single} >= {("falsified", "attack"), ("verified", "milp")}  # MILPs ran


def test_shard_plan_follows_the_verify_params():
    from robustlib.scaleout.shards import plan_shards

    params = {"data": {"n_test": 200},
              "verify": {"milp_runs": ["a"], "n_test": 25, "shard_size": 10, "eps": [0.1, 0.3]}}
    assert [(s.eps, s.start) for s in plan_shards(params, "a")] == [(0.1, 0), (0.1, 10), (0.1, 20), (0.3, 0),
                                                                     (0.3, 10), (0.3, 20)]
    assert plan_shards(params, "b") == []


# ------------------------------------------------------------------------------------------ simulation
def _dag():
    T = simulate.Task
    return [T("A", 3, ()), T("B", 2, ("A",)), T("C", 4, ("A",)), T("D", 1, ("B", "C")), T("E", 5, ())]


def test_critical_path_of_a_hand_computed_dag():
    length, path = simulate.critical_path(_dag())
    assert (length, path) == (8, ["A", "C", "D"])
    assert simulate.bottom_levels({t.name: t for t in _dag()}) == {"A": 8, "B": 3, "C": 5, "D": 1, "E": 5}


def test_list_schedule_of_a_hand_computed_dag():
    # k=1: all 15 minutes; k=2: A|E at 0, C at 3 (bottom level 5 > B's 3), B at 5, D at 7 -> 8 (= the critical path)
    assert simulate.schedule(_dag(), 1)[0] == 15
    makespan, placed = simulate.schedule(_dag(), 2)
    assert makespan == 8
    assert {n: placed[n][:2] for n in placed} == {"A": (0, 3), "E": (0, 5), "C": (3, 7), "B": (5, 7), "D": (7, 8)}
    four = [simulate.Task(f"t{i}", 3) for i in range(4)]  # independent: total / k
    assert [simulate.schedule(four, k)[0] for k in (1, 2, 3, 4, 8)] == [12, 6, 6, 3, 3]
    with pytest.raises(ValueError, match="cycle"):
        simulate.schedule([simulate.Task("a", 1, ("b",)), simulate.Task("b", 1, ("a",))], 2)
    with pytest.raises(ValueError, match="unknown"):
        simulate.critical_path([simulate.Task("a", 1, ("z",))])
    assert math.isclose(simulate.schedule([], 3)[0], 0)


def test_benchmark_results_stay_out_of_the_report_dependency(root):
    """benchmarks/results/ is a dependency of the report stage: the scale-out benchmark's files are in
    .dvcignore, so writing them leaves that dependency's hash (and every committed report) as it is."""
    for name in ("scaleout.json", "scaleout.md"):
        res = subprocess.run([DVC, "check-ignore", f"benchmarks/results/{name}"], cwd=root, capture_output=True,
                             text=True)
        assert res.returncode == 0, f"benchmarks/results/{name} is not in .dvcignore: {res.stdout}{res.stderr}"
    res = subprocess.run([DVC, "check-ignore", "benchmarks/results/objectives.json"], cwd=root, capture_output=True)
    assert res.returncode == 1  # the report's own input stays tracked


def test_outputs_that_differ_in_wall_clock_only_are_explained(tmp_path):
    """The comparison with `dvc repro`'s outputs strips timing keys, also per eps (summary/verify), and counts a
    verify summary that differs in MILP verdicts as derived from a time-limited verify table, nothing else."""
    from robustlib.scaleout.workspace import compare_outputs

    def write(ws: Path, summary: dict, table: str) -> None:
        (ws / "reports/p/summary/verify").mkdir(parents=True)
        (ws / "reports/p/verify").mkdir(parents=True)
        (ws / "reports/p/summary/verify/r.json").write_text(json.dumps(summary))
        (ws / "reports/p/verify/r.csv").write_text(table)

    head = "index,eps,verdict,method,reason,seconds,margin,tol,unstable,stable,pgd_robust,aa_robust,detail\n"
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, {"verified@0.1": 0.5, "median_seconds@0.1": 0.01, "minutes": 1.0},
          head + "1,0.1,verified,milp,,0.5,1.0,0.001,3,4,True,True,\n")
    write(b, {"verified@0.1": 0.5, "median_seconds@0.1": 0.02, "minutes": 2.0},
          head + "1,0.1,verified,milp,,0.7,1.0,0.001,3,4,True,True,\n")
    out = compare_outputs(a, b, "p")
    assert out["unexplained"] == [] and "reports/p/summary/verify/r.json" in out["equal_without_wall_clock"]
    (b / "reports/p/summary/verify/r.json").write_text(json.dumps({"verified@0.1": 0.4, "median_seconds@0.1": 0.02}))
    assert compare_outputs(a, b, "p")["unexplained"] == ["reports/p/summary/verify/r.json"]  # no time limit hit


def test_lock_comparison_of_some_targets_ignores_their_order_not_their_hashes(tmp_path):
    """A run of some targets records them in the targets' `dvc repro` order: compared with a whole pipeline's
    lock, only those stages count, in any order; a hash that differs still counts."""
    from robustlib.scaleout.workspace import compare_locks

    def lock(ws: Path, stages: dict) -> Path:
        ws.mkdir()
        (ws / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))
        return ws

    def entry(md5: str) -> dict:
        return {"cmd": "c", "outs": [{"path": "o", "md5": md5, "size": 1}]}

    whole = lock(tmp_path / "a", {"x": entry("1"), "y": entry("2"), "z": entry("3")})
    part = lock(tmp_path / "b", {"z": entry("3"), "x": entry("1")})
    assert compare_locks(whole, part, []) != []  # the whole pipeline against a part: stages differ
    assert compare_locks(whole, part, [], stages=["x", "z"]) == []
    part_changed = lock(tmp_path / "c", {"z": entry("4"), "x": entry("1")})
    assert compare_locks(whole, part_changed, [], stages=["x", "z"]) == ["z: outs o differs in hash though its files "
                                                                         "are identical"]
