"""Submit the stale stages of the pipeline to a Dask cluster and record them as ``dvc repro`` would.

One Dask task per stale stage (``tasks.run_stage``), its upstream stages' futures as its dependencies,
so Dask starts a stage as soon as everything it depends on is done and a worker is free; verify stages
of MILP runs first get one task per example shard (``tasks.run_shard``). Priorities: the stages with
the longest chain of dependents first. The driver records each finished stage (``tasks.record_stage``)
in ``dvc repro``'s own order (``dag.Plan.order``) as soon as every stage before it in that order is
finished, so dvc.lock gets the entries, in the order, that a sequential ``dvc repro`` writes. A stage
that fails (after its retries) fails its dependents; independent stages still finish and are recorded
(as ``dvc repro --keep-going``), then the run raises.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dask
import yaml
from distributed import Client

from robustlib.scaleout import cluster as C
from robustlib.scaleout import config as K
from robustlib.scaleout import dag, tasks
from robustlib.scaleout import shards as S

logger = logging.getLogger(__name__)


class ParallelReproError(RuntimeError):
    """Some stages failed; the others were recorded."""


def _profile_params(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "params.yaml").read_text())


def submit(client: Any, root: Path, plan: dag.Plan, cfg: K.ScaleoutConfig, params: dict[str, Any],
           gpus_per_worker: int) -> tuple[dict[str, Any], list[Any]]:
    """Submit the plan's stale stages (and their verify shards) to ``client``: the stage futures by name,
    and the shard futures."""
    futures: dict[str, Any] = {}
    shard_futures: list[Any] = []
    depth = plan.downstream_depth()
    for name in plan.order:
        if name not in plan.stale:
            continue
        node = plan.stages[name]
        ups = [futures[u] for u in node.upstream if u in futures]
        family, _, item = name.partition("@")
        extra: list[Any] = []
        if family == "verify" and cfg.verify_shards:
            model_stages = [futures[u] for u in node.upstream if u in futures and u.partition("@")[0] != "attack"]
            for sh in S.plan_shards(params, item):
                extra.append(client.submit(tasks.run_shard, str(root), sh.run, sh.eps, sh.start,
                                           cfg.threads_per_worker, *model_stages, key=sh.key, pure=False,
                                           priority=depth[name] + 1, retries=cfg.retries))
            shard_futures.extend(extra)
        futures[name] = client.submit(tasks.run_stage, str(root), name, *ups, *extra, key=f"stage-{name}",
                                      pure=False, priority=depth[name], retries=cfg.retries,
                                      resources=C.train_resources(name, gpus_per_worker))
    return futures, shard_futures


def record_in_order(client: Any, root: Path, plan: dag.Plan, futures: dict[str, Any]) -> tuple[list[dict], dict]:
    """Wait for the stage futures and record them in ``dvc repro``'s order; returns the results and the
    failures (stage -> error text)."""
    results, failed = [], {}
    for name in plan.order:
        if name not in futures:
            continue
        try:
            res = futures[name].result()
        except Exception as err:  # a failed stage, or one downstream of a failure
            failed[name] = f"{type(err).__name__}: {err}"
            logger.error("stage %s failed: %s", name, failed[name])
            continue
        if res["status"] in ("ran", "restored"):
            tasks.record_stage(root, name)
        results.append(res)
        logger.info("%s: %s in %.1f s on %s", name, res["status"], res["seconds"], res["worker"])
    return results, failed


def reproduce(root: str | Path = ".", workers: int | None = None, slurm: bool = False, address: str | None = None,
              targets: Sequence[str] | None = None, summary: str | Path | None = None,
              cluster_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bring the pipeline at ``root`` up to date on Dask workers: ``workers`` local processes (default:
    scaleout.yaml), Slurm jobs (``slurm``), or an existing scheduler (``address``). Returns (and with
    ``summary`` writes as JSON) what ran where and for how long."""
    root = Path(root).resolve()
    params = _profile_params(root)
    cfg = K.load(root, params["base"]["profile"])
    if cfg.threads_per_worker < int(params["base"].get("threads", 2)):
        logger.warning("threads_per_worker %d < base.threads %d: each stage's torch still uses base.threads",
                       cfg.threads_per_worker, params["base"].get("threads", 2))
    t0 = time.perf_counter()
    plan = dag.plan(root, targets)
    logger.info("%d stages, %d changed, %d to evaluate", len(plan.order), len(plan.changed), len(plan.stale))
    out: dict[str, Any] = {"profile": cfg.profile, "stages": len(plan.order), "stale": sorted(plan.stale)}
    if plan.stale:
        with ExitStack() as stack:
            stack.enter_context(dask.config.set({"distributed.scheduler.allowed-failures": cfg.retries}))
            if address:
                cl, gpus, kind = address, cfg.gpus(0), "address"
            elif slurm:
                cl = stack.enter_context(C.slurm_cluster(cfg, root, workers, **(cluster_overrides or {})))
                gpus, kind = (0 if cfg.gpus_per_worker == "auto" else int(cfg.gpus_per_worker)), "slurm"
            else:
                devices = C.cuda_devices()
                cl = stack.enter_context(C.local_cluster(cfg, workers, devices))
                gpus, kind = cfg.gpus(devices), "local"
            client = stack.enter_context(Client(cl))
            if kind != "address":
                client.wait_for_workers(1, timeout=600)
            out.update(cluster=kind, workers=int(workers or cfg.workers), gpus_per_worker=gpus,
                       threads_per_worker=cfg.threads_per_worker, memory_per_worker=cfg.memory_per_worker)
            futures, shard_futures = submit(client, root, plan, cfg, params, gpus)
            results, failed = record_in_order(client, root, plan, futures)
            shards = [f.result() for f in shard_futures if f.status == "finished"]
        out.update(results=results, shards=shards, failed=failed)
    else:
        out.update(results=[], shards=[], failed={})
    out["wall_seconds"] = round(time.perf_counter() - t0, 2)
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps(out, indent=2) + "\n")
    if out["failed"]:
        raise ParallelReproError(f"failed: {sorted(out['failed'])}; the other stages were recorded in dvc.lock")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustlib.scaleout",
                                     description="dvc repro of the active profile on several Dask workers")
    parser.add_argument("targets", nargs="*", help="stages (default: the whole dvc.yaml)")
    parser.add_argument("-j", "--workers", type=int, default=None, help="workers (default: scaleout.yaml)")
    parser.add_argument("--slurm", action="store_true", help="workers as Slurm jobs (dask-jobqueue SLURMCluster)")
    parser.add_argument("--address", default=None, help="an existing Dask scheduler's address instead")
    parser.add_argument("--summary", default=None, help="write what ran where as JSON")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # before dask is imported; workers inherit it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = reproduce(".", args.workers, args.slurm, args.address, args.targets, args.summary)
    ran = sum(r["status"] != "up to date" for r in out["results"])
    print(f"{ran} of {out['stages']} stages ran or were restored in {out['wall_seconds']:.1f} s")
    return 0
