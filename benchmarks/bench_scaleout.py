"""The pipeline on several workers (robustlib.scaleout): measured on the smoke profile, simulated for the
paper profile on k GPUs. One command, a few tens of minutes on 2 cores:

    python benchmarks/bench_scaleout.py              # writes benchmarks/results/scaleout.json and .md
    python benchmarks/bench_scaleout.py --simulate-only

Measured: the smoke profile from a fresh copy of the workspace with a sequential `dvc repro`, then with
the parallel runner at 1 and 2 local workers (wall time of each, the machine's load from `uptime`
before and after, whether the outputs and dvc.lock agree with `dvc repro`'s).

Simulated: the paper profile's DAG (from DVC, as the runner builds it) list-scheduled on k = 1, 2, 4,
8, 16 workers of one GPU each (robustlib.scaleout.simulate), from stage minutes that every assumption
in ``ASSUMPTIONS`` states. The files under benchmarks/results/ named scaleout.* are in .dvcignore: the
report stage depends on that folder and must not go stale when they change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robustlib.scaleout import dag, simulate  # noqa: E402
from robustlib.scaleout.workspace import compare_locks, compare_outputs, copy_workspace, run  # noqa: E402

logger = logging.getLogger(__name__)
RESULTS = ROOT / "benchmarks" / "results"
KS = (1, 2, 4, 8, 16)
ADVERSARIAL = {"pgd_at", "fgsm", "fgsm_at", "trades"}  # objective terms that craft adversarial examples per step


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def notebook_seconds(ws: Path, profile: str = "smoke") -> float:
    """The stages' own compute: the sum of papermill's durations of the executed notebooks (without DVC's
    and the runner's bookkeeping; on a shared machine it moves with the load as much as the wall time)."""
    total = 0.0
    for nb in sorted((ws / "reports" / profile / "executed").glob("*.ipynb")):
        total += float(json.loads(nb.read_text())["metadata"]["papermill"]["duration"])
    return round(total, 1)


# ------------------------------------------------------------------------------------------- measured
def measure(workers: list[int], keep: Path | None) -> dict[str, Any]:
    """The smoke profile sequentially and on each worker count; wall seconds and comparisons."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    base = Path(tempfile.mkdtemp(prefix="bench_scaleout_", dir=keep))
    runs: dict[str, Any] = {}
    seq = copy_workspace(ROOT, base / "sequential", "smoke")
    before = uptime()
    t0 = time.perf_counter()
    run([dvc, "repro"], seq)
    runs["dvc repro"] = {"wall_seconds": round(time.perf_counter() - t0, 1), "uptime_before": before,
                         "uptime_after": uptime(), "notebook_seconds": notebook_seconds(seq)}
    logger.info("dvc repro: %s", runs["dvc repro"])
    for n in workers:
        ws = copy_workspace(ROOT, base / f"workers_{n}", "smoke")
        summary = base / f"summary_{n}.json"
        before = uptime()
        t0 = time.perf_counter()
        run([sys.executable, "-m", "robustlib.scaleout", "-j", str(n), "--summary", str(summary)], ws)
        wall = round(time.perf_counter() - t0, 1)
        after = uptime()
        status = run([dvc, "status"], ws)
        cmp = compare_outputs(seq, ws, "smoke")
        lock_problems = compare_locks(seq, ws, cmp["differ"])
        s = json.loads(summary.read_text())
        runs[f"{n} worker{'s' if n > 1 else ''}"] = {
            "wall_seconds": wall, "uptime_before": before, "uptime_after": after,
            "notebook_seconds": notebook_seconds(ws),
            "shard_task_seconds": round(sum(x["seconds"] for x in s["shards"]), 1),
            "stages_ran": sum(r["status"] == "ran" for r in s["results"]),
            "verify_shard_tasks": len(s["shards"]), "workers_used": len({r["worker"] for r in s["results"]}),
            "dvc_status_clean": "up to date" in status,
            "output_files": cmp["files"], "byte_identical_files": cmp["identical"],
            "equal_without_wall_clock_fields": cmp["equal_without_wall_clock"],
            "rendered_for_reading_differ": cmp["presentation"], "milp_time_limit_differences": cmp["milp_time_limits"],
            "unexplained_differences": cmp["unexplained"], "missing_or_extra_files": cmp["only_a"] + cmp["only_b"],
            "dvc_lock_differences_not_explained_by_those_files": lock_problems,
            "stage_seconds": {r["stage"]: r["seconds"] for r in s["results"]}}
        logger.info("%d workers: %s s", n, wall)
    machine = {"cpus": os.cpu_count(), "uname": " ".join(platform.uname()[:3])}
    return {"profile": "smoke", "machine": machine, "runs": runs, "workspaces": str(base)}


# ------------------------------------------------------------------------------------------ simulated
ASSUMPTIONS = [
    "k workers, each holding one GPU and its node's CPUs; every task (a stage or a verify shard) occupies one worker "
    "for its minutes; a worker starts the ready task with the longest remaining path (as the runner's priorities).",
    "Training (train@<run>): the paper's GPU minutes where robustlib/reporting/paper.py records them "
    "(hamming_stability 252, pgd_at 1620, one RTX 1080). Every other run: its cifar10-cpu minutes per epoch "
    "(measured, metrics/train) relative to the same anchor (pgd_at for runs whose objective crafts adversarial "
    "examples, else hamming_stability), times the anchor's paper minutes; a run cifar10-cpu did not train: its MNIST "
    "minutes per epoch (mnist-survey) relative to mnist-survey's standard, times default's standard relative to "
    "the anchor (both MNIST profiles: 5 epochs, SmallCNN, measured on the same host). The paper's other "
    "per-network minutes (up to 3,053) are not recorded in this repository and are not used.",
    "SmallCNN runs of the paper profile (rs_loss, hamming_stability_verify) are costed like the anchors' "
    "PreActResNet18 (an over-estimate of their training).",
    "lpips: cifar10-cpu's measured minutes (CPU), unchanged.",
    "attack@<run>: cifar10-cpu's measured minutes (1,000 examples, CPU) times the example ratio (paper "
    "attack.n_test / cifar10-cpu's); a run without a measurement: the median of the measured ones. No GPU speed-up "
    "is assumed, so attacks weigh more here than on a GPU.",
    "verify@<run> with MILP: cifar10-cpu's measured minutes (its own, or for a run that collapsed there the "
    "largest measured MILP stage) times the example ratio, the time-limit ratio (120 s / 10 s) and the process "
    "ratio (2 / 8); with shards, 95% of it split evenly over (n_test / shard_size) x eps shards and 5% in the "
    "stage task that merges them; without shards one task. Other verify stages: the median measured minutes.",
    "ablations, laplacian, report: 0.4 min each (cifar10-cpu's three took 1.1 min together, README).",
]


def _cpu_minutes(report: str) -> dict[str, dict[str, float]]:
    base = ROOT / "reports" / report / "metrics"
    out: dict[str, dict[str, float]] = {"train_per_epoch": {}, "attack": {}, "verify": {}}
    for f in (base / "train").glob("*.json"):
        m = json.loads(f.read_text())
        epochs = (m.get("diverged") or {}).get("epoch") or m.get("epochs")
        if m.get("train_minutes") and epochs:
            out["train_per_epoch"][f.stem] = float(m["train_minutes"]) / float(epochs)
    for kind in ("attack", "verify"):
        for f in (base / kind).glob("*.json"):
            out[kind][f.stem] = float(json.loads(f.read_text())["minutes"])
    if (base / "lpips.json").exists():
        out["lpips"] = {"lpips": float(json.loads((base / "lpips.json").read_text())["minutes"])}
    return out


def _paper_train_anchors() -> dict[str, float]:
    from robustlib.reporting.paper import TABLE1

    for order in TABLE1.orders:
        if order.metric == "train_minutes":
            return {order.better: float(order.paper[0]), order.worse: float(order.paper[1])}
    raise RuntimeError("robustlib.reporting.paper records no training minutes")


def paper_tasks(shards: bool) -> tuple[list[simulate.Task], dict[str, float], dict[str, str]]:
    """The paper profile's DAG with stage minutes (``ASSUMPTIONS``): tasks, stage minutes, and where each
    training figure came from."""
    with tempfile.TemporaryDirectory() as tmp:
        ws = copy_workspace(ROOT, Path(tmp) / "ws", "paper")
        plan = dag.plan(ws)
        params = yaml.safe_load((ws / "params.yaml").read_text())
    cpu = yaml.safe_load((ROOT / "profiles" / "cifar10-cpu.yaml").read_text())
    cpu_params = {**yaml.safe_load((ROOT / "profiles" / "default.yaml").read_text())}
    for k, v in cpu.items():
        cpu_params[k] = {**cpu_params.get(k, {}), **v} if isinstance(v, dict) and k not in ("runs", "finetunes") else v
    c10, mnist, default = _cpu_minutes("cifar10-cpu"), _cpu_minutes("mnist-survey"), _cpu_minutes("default")
    anchors = _paper_train_anchors()
    runs = {**params["runs"], **(params.get("finetunes") or {})}
    minutes: dict[str, float] = {}
    source: dict[str, str] = {}
    n_ratio = params["attack"]["n_test"] / cpu_params["attack"]["n_test"]
    vp, cvp = params["verify"], cpu_params["verify"]
    v_ratio = (vp["n_test"] / cvp["n_test"]) * (vp["time_limit"] / cvp["time_limit"]) * (
        cvp["processes"] / vp["processes"])
    milp_measured = {r: m for r, m in c10["verify"].items() if r in cvp["milp_runs"]}
    collapsed = {r for r in c10["verify"] if r.startswith("hamming_stability")}  # README: collapsed on cifar10-cpu
    for name in plan.order:
        family, _, run_name = name.partition("@")
        if family in ("train", "finetune"):
            terms = set((runs[run_name] or {}).get("objective", {}))
            anchor = "pgd_at" if terms & ADVERSARIAL else "hamming_stability"
            if run_name in anchors:
                minutes[name], source[name] = anchors[run_name], "paper"
            elif run_name in c10["train_per_epoch"]:
                minutes[name] = anchors[anchor] * c10["train_per_epoch"][run_name] / c10["train_per_epoch"][anchor]
                source[name] = f"cifar10-cpu relative to {anchor}"
            else:  # mnist-survey trains no anchor: its standard run links it to default's anchors (same settings)
                ms, df = mnist["train_per_epoch"], default["train_per_epoch"]
                minutes[name] = anchors[anchor] * (ms[run_name] / ms["standard"]) * (df["standard"] / df[anchor])
                source[name] = f"mnist-survey relative to standard, default's standard relative to {anchor}"
        elif family == "lpips":
            minutes[name] = c10["lpips"]["lpips"]
        elif family == "attack":
            minutes[name] = c10["attack"].get(run_name, statistics.median(c10["attack"].values())) * n_ratio
        elif family == "verify":
            if run_name in vp["milp_runs"]:
                own = milp_measured.get(run_name) if run_name not in collapsed else None
                minutes[name] = (own if own is not None else max(milp_measured.values())) * v_ratio
            else:
                minutes[name] = statistics.median(m for r, m in c10["verify"].items() if r not in cvp["milp_runs"])
        else:
            minutes[name] = 0.4
    tasks = []
    for name in plan.order:
        node = plan.stages[name]
        family, _, run_name = name.partition("@")
        if shards and family == "verify" and run_name in vp["milp_runs"]:
            from robustlib.scaleout.shards import plan_shards

            sh = plan_shards(params, run_name)
            ups = tuple(u for u in node.upstream if not u.startswith("attack@"))
            keys = []
            for s in sh:
                tasks.append(simulate.Task(s.key, 0.95 * minutes[name] / len(sh), ups))
                keys.append(s.key)
            tasks.append(simulate.Task(name, 0.05 * minutes[name], (*node.upstream, *keys)))
        else:
            tasks.append(simulate.Task(name, minutes[name], node.upstream))
    return tasks, minutes, source


def simulated() -> dict[str, Any]:
    out: dict[str, Any] = {"profile": "paper", "assumptions": ASSUMPTIONS, "scenarios": {}}
    for shards in (True, False):
        tasks, minutes, source = paper_tasks(shards)
        one = simulate.schedule(tasks, 1)[0]
        cp, path = simulate.critical_path(tasks)
        rows = []
        for k in KS:
            span = simulate.schedule(tasks, k)[0]
            rows.append({"gpus": k, "hours": round(span / 60, 1), "speedup": round(one / span, 2),
                         "lower_bound_hours": round(max(cp, one / k) / 60, 1)})
        out["scenarios"]["verify shards as tasks" if shards else "one task per stage"] = {
            "tasks": len(tasks), "total_hours": round(one / 60, 1), "critical_path_hours": round(cp / 60, 1),
            "critical_path": path, "by_gpus": rows}
        out["stage_minutes"] = {k: round(v, 1) for k, v in minutes.items()}
        out["training_source"] = source
    return out


# ------------------------------------------------------------------------------------------ report
def markdown(res: dict[str, Any]) -> str:
    lines = ["# The pipeline on several workers (benchmarks/bench_scaleout.py)", ""]
    if "measured" in res:
        m = res["measured"]
        lines += [f"Measured: smoke profile, fresh workspace copies, {m['machine']['cpus']} CPUs "
                  f"({m['machine']['uname']}); outputs compared with the sequential `dvc repro`'s.",
                  "", "| run | wall (s) | notebooks (s) | load average before -> after | byte-identical | equal but "
                  "for wall-clock fields | notebooks, .md, .png differing | MILP verdicts at the time limit | "
                  "unexplained | dvc status clean |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in m["runs"].items():
            load = f"{r['uptime_before'].split('load average:')[-1].strip()} -> " \
                   f"{r['uptime_after'].split('load average:')[-1].strip()}"
            if "output_files" not in r:
                lines.append(f"| {name} | {r['wall_seconds']} | {r['notebook_seconds']} | {load} | (reference) "
                             "| | | | | |")
                continue
            milp = {k: v for k, v in r["milp_time_limit_differences"].items() if k != "derived"}
            milp_text = "; ".join(f"{Path(k).name}: {len(v)}" for k, v in milp.items()) or "none"
            ident = f"{r['byte_identical_files']} of {r['output_files']}"
            lines.append(f"| {name} | {r['wall_seconds']} | {r['notebook_seconds']} | {load} | {ident} "
                         f"| {len(r['equal_without_wall_clock_fields'])} | {len(r['rendered_for_reading_differ'])} | "
                         f"{milp_text} | {len(r['unexplained_differences'])} | {r['dvc_status_clean']} |")
        lines += ["", "notebooks (s): the sum of the executed notebooks' papermill durations (the stages' compute, "
                  "which other jobs on the machine slow as much as the wall time). Every list of files is in "
                  "scaleout.json.", ""]
    s = res["simulated"]
    lines += ["Simulated: paper profile on k GPUs (list schedule of the DAG; assumptions below).", ""]
    for name, sc in s["scenarios"].items():
        lines += [f"**{name}**: {sc['tasks']} tasks, {sc['total_hours']} h of work, critical path "
                  f"{sc['critical_path_hours']} h.", "", "| GPUs | hours | speed-up | lower bound (h) |",
                  "|---|---|---|---|"]
        lines += [f"| {r['gpus']} | {r['hours']} | {r['speedup']} | {r['lower_bound_hours']} |" for r in sc["by_gpus"]]
        lines.append("")
    lines += ["Assumptions:", ""] + [f"- {a}" for a in s["assumptions"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--simulate-only", action="store_true", help="keep the measured part of the last results")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, default=None, help="put the workspaces under this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out_json = RESULTS / "scaleout.json"
    res: dict[str, Any] = {}
    if args.simulate_only and out_json.exists():
        res = {k: v for k, v in json.loads(out_json.read_text()).items() if k == "measured"}
    elif not args.simulate_only:
        res["measured"] = measure(args.workers, args.keep)
    res["simulated"] = simulated()
    out_json.write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "scaleout.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
