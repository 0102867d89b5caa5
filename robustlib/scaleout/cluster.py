"""Dask clusters for the runner: worker processes on this machine, or Slurm jobs (dask-jobqueue).

Every worker runs one task at a time (``nthreads=1``: a stage uses several cores itself) and holds
``threads_per_worker`` cores (OMP/MKL threads of its stages; Slurm ``--cpus-per-task``),
``memory_per_worker`` (Dask's ``memory_limit`` of the worker process; Slurm ``--mem``) and, with GPUs,
the resource ``GPU`` (``gpus_per_worker``): train, finetune and lpips tasks ask for ``{"GPU": 1}``. On
this machine each worker sees its own device (``CUDA_VISIBLE_DEVICES``); under Slurm, ``--gres=gpu:N``.
A worker that dies is restarted by its nanny and its task is run again on a live worker, up to
``retries`` times (``distributed.scheduler.allowed-failures``).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from dask_jobqueue import SLURMCluster
from distributed import Nanny, Scheduler, SpecCluster

from robustlib.scaleout.config import ScaleoutConfig

logger = logging.getLogger(__name__)


def worker_env(cfg: ScaleoutConfig) -> dict[str, str]:
    """Environment of a worker (inherited by the stage commands it runs)."""
    t = str(cfg.threads_per_worker)
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t}


def cuda_devices() -> int:
    """CUDA devices visible here (0 without torch's CUDA)."""
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as err:  # a broken CUDA set-up counts as none
        logger.warning("CUDA not usable here: %s", err)
        return 0


def local_cluster(cfg: ScaleoutConfig, workers: int | None = None, gpus: int | None = None) -> Any:
    """``workers`` (default ``cfg.workers``) worker processes on this machine. With ``gpus`` devices here
    (default: those CUDA sees), worker ``i`` sees device ``i mod gpus`` and holds ``gpus_per_worker`` of the
    ``GPU`` resource."""
    n = int(workers or cfg.workers)
    devices = cuda_devices() if gpus is None else int(gpus)
    per_worker = cfg.gpus(devices)
    if per_worker and devices == 0:
        raise RuntimeError(f"scaleout.yaml gives {cfg.profile} {per_worker} GPU(s) per worker, "
                           "but no CUDA device is visible")
    specs = {}
    for i in range(n):
        env = worker_env(cfg)
        if per_worker:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str((i * per_worker + j) % devices) for j in range(per_worker))
        specs[i] = {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": cfg.memory_per_worker, "env": env,
                                              "resources": {"GPU": per_worker} if per_worker else None,
                                              "host": "127.0.0.1", "dashboard_address": None}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    logger.info("local cluster: %d workers, %d thread(s), %d bytes, %d GPU(s) each", n, cfg.threads_per_worker,
                cfg.memory_per_worker, per_worker)
    return SpecCluster(workers=specs, scheduler=scheduler, name=f"robustlib-{cfg.profile}")


def slurm_kwargs(cfg: ScaleoutConfig, root: str | Path) -> dict[str, Any]:
    """``SLURMCluster`` arguments: one Dask worker per Slurm job, one task at a time (``cores=1``), with
    ``threads_per_worker`` CPUs (``job_cpu``), ``memory_per_worker``, ``--gres=gpu:N`` and the ``GPU``
    resource when ``gpus_per_worker`` is set (``auto`` means none on Slurm), started in ``root`` with
    this interpreter's environment."""
    s = dict(cfg.slurm)
    gpus = cfg.gpus(0) if cfg.gpus_per_worker != "auto" else 0  # auto on Slurm: none unless set
    root = Path(root).resolve()
    venv = Path(sys.executable).parent
    prologue = [f"cd {shlex.quote(str(root))}", f"export PATH={shlex.quote(str(venv))}:$PATH",
                *(f"export {k}={v}" for k, v in worker_env(cfg).items()),
                "export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000",  # as scripts/bootstrap.sh
                *s.get("job_script_prologue", [])]
    extra = list(s.get("job_extra_directives", []))
    if gpus:
        extra.append(f"--gres=gpu:{gpus}")
    log_dir = s.get("log_directory") or str(root / "runs" / "scaleout" / "slurm-logs")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    kwargs = dict(cores=1, processes=1, job_cpu=cfg.threads_per_worker,
                  memory=f"{cfg.memory_per_worker // 2**20}MiB", walltime=s.get("walltime"), queue=s.get("queue"),
                  account=s.get("account"), job_extra_directives=extra, job_script_prologue=prologue,
                  python=s.get("python") or sys.executable, local_directory=s.get("local_directory"),
                  log_directory=log_dir, interface=s.get("interface"),
                  worker_extra_args=["--resources", f"GPU={gpus}"] if gpus else [],
                  scheduler_options={"dashboard_address": None},
                  job_name=f"robustlib-{cfg.profile}")
    return kwargs


def slurm_cluster(cfg: ScaleoutConfig, root: str | Path, workers: int | None = None, **overrides: Any) -> Any:
    """A dask-jobqueue ``SLURMCluster`` (``slurm_kwargs``, then ``overrides``) scaled to ``workers`` jobs."""
    kwargs = slurm_kwargs(cfg, root)
    kwargs.update(overrides)
    cluster = SLURMCluster(**kwargs)
    cluster.scale(jobs=int(workers or cfg.workers))
    return cluster


def train_resources(name: str, gpus_per_worker: int) -> dict[str, int] | None:
    """The Dask resources of the task of stage ``name``: one GPU for training stages when workers hold GPUs."""
    family = name.partition("@")[0]
    if gpus_per_worker and family in ("train", "finetune", "lpips"):
        return {"GPU": 1}
    return None


def env_summary() -> dict[str, Any]:
    """Where the driver runs (recorded with a run's summary)."""
    return {"python": sys.executable, "cwd": os.getcwd(), "cpus": os.cpu_count()}
