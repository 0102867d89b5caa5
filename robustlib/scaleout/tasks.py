"""What a worker runs, and what the driver records: both through DVC's own stage calls.

A stage task does what ``dvc repro`` does for one stage before and while running it (``Stage.reproduce``
and ``dvc.stage.run.run_stage``): skip it if ``Stage.changed()`` says it is up to date, else remove its
outputs (``Stage.remove_outs``), take it from DVC's run cache if that holds it, else run its command with
DVC's ``cmd_run`` (the same shell, environment and working directory). The driver then records it as
``Stage.run`` and ``dvc repro`` do after the command: ``Stage.save`` (run cache as DVC would), ``Stage.commit``,
``Stage.dump`` (dvc.lock is written by DVC). DVC's bookkeeping needs its repository lock; the tasks and the
driver take it one at a time under a Dask ``Lock`` (``DVC_LOCK``), so no process ever waits on DVC's file lock.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distributed import Lock, get_worker
from dvc.repo import Repo, lock_repo
from dvc.stage.cache import RunCacheNotFoundError
from dvc.stage.run import cmd_run

logger = logging.getLogger(__name__)

DVC_LOCK = "robustlib-scaleout-dvc"  # the Dask Lock that serializes DVC bookkeeping across workers and driver


@contextmanager
def dvc_repo(root: str | Path):
    """DVC's ``Repo`` at ``root`` with its repository lock held, while holding the Dask lock ``DVC_LOCK``
    (through the worker's client in a task, the current client in the driver)."""
    with Lock(DVC_LOCK):
        repo = Repo(str(root))
        try:
            with lock_repo(repo):
                yield repo
        finally:
            repo.close()


def find_stage(repo: Any, name: str) -> Any:
    """The stage at DVC address ``name`` in ``repo``'s index."""
    for stage in repo.index.stages:
        if stage.addressing == name:
            return stage
    raise KeyError(f"no stage {name!r} in {repo.root_dir}")


def _where() -> str:
    try:
        return get_worker().address
    except ValueError:  # not on a worker (tests call the function directly)
        return f"{socket.gethostname()}:{os.getpid()}"


def run_stage(root: str, name: str, *upstream: Any) -> dict[str, Any]:
    """Bring stage ``name`` up to date in the workspace ``root`` (``upstream``: the results of the tasks it
    waits for; unused). Returns its status (``up to date``, ``restored`` from the run cache, or ``ran``),
    seconds and the worker that ran it. Raises if the command fails (Dask then retries the task)."""
    t0 = time.perf_counter()
    with dvc_repo(root) as repo:
        stage = find_stage(repo, name)
        if not stage.changed():
            status = "up to date"
        else:
            stage.remove_outs(ignore_remove=False, force=False)
            try:
                repo.stage_cache.restore(stage)
                status = "restored"
            except RunCacheNotFoundError:
                status = "ran"
    if status == "ran":
        logger.info("running %s on %s", name, _where())
        cmd_run(stage)  # DVC's own: $SHELL -c cmd in the stage's wdir with DVC_ROOT and DVC_STAGE set
    return {"stage": name, "status": status, "seconds": round(time.perf_counter() - t0, 3), "worker": _where()}


def record_stage(root: str | Path, name: str) -> None:
    """Record a finished stage as ``dvc repro`` does after running it: hashes and run cache
    (``Stage.save``; the run cache only when every non-metric, non-plot output is cached, as in
    ``Stage.run``), outputs into the cache (``Stage.commit``) and its dvc.lock entry (``Stage.dump``)."""
    with dvc_repo(root) as repo:
        stage = find_stage(repo, name)
        no_cache_outs = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
        stage.save(run_cache=not no_cache_outs)
        stage.commit()
        stage.dump(update_pipeline=False)


def run_shard(root: str, run: str, eps: float, start: int, processes: int, *upstream: Any) -> dict[str, Any]:
    """Compute one verify shard (``robustlib.scaleout.shards``) in a fresh process in ``root``. A failure
    is reported, not raised: the verify stage then computes that block itself."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "robustlib.scaleout.shards", run, repr(float(eps)), str(int(start)),
           "--processes", str(int(processes))]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    out = {"stage": f"verify@{run}", "shard": f"eps_{eps:g}/{start}", "status": "computed" if res.returncode == 0
           else "failed", "seconds": round(time.perf_counter() - t0, 3), "worker": _where()}
    if res.returncode != 0:
        out["error"] = res.stderr[-2000:]
        logger.warning("verify shard %s of %s failed (the stage will compute it): %s", out["shard"], run,
                       res.stderr[-500:])
    return out
