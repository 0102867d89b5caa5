"""The train stage: one named run from params.yaml -> checkpoint, split, metrics, learning curve."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robustlib.data.datasets import load_split, make_split
from robustlib.evaluation.accuracy import accuracy
from robustlib.pipeline import paths
from robustlib.pipeline.io import save_model, write_json
from robustlib.pipeline.params import run_config
from robustlib.stages.common import setup
from robustlib.training.loop import NonFiniteLossError, TrainConfig, TrainResult, init_model, train

logger = logging.getLogger(__name__)


def run(run: str, params_file: str = "params.yaml", output_root: str = ".", progress: bool = True) -> dict[str, Any]:
    """Train named run ``run`` and write its outputs (see ``robustlib.pipeline.paths``); return its metrics.

    Resumes from the run's per-epoch checkpoint if an earlier attempt with the same configuration
    was interrupted; deletes that checkpoint once the run has completed. A run whose loss turns
    non-finite after its first epoch is a result, not a crash: its outputs are those of the last finite
    epoch and its metrics say where it diverged (``diverged``), which the report shows beside every
    number of that run.
    """
    env = setup(params_file, output_root,
                lambda p: f"{'finetune' if run in (p.get('finetunes') or {}) else 'train'}@{run}")
    cfg = run_config(env.params, run)
    data = env.params["data"]
    seed = int(env.params["base"]["seed"])
    t0 = time.perf_counter()
    train_set = load_split(data["dataset"], train=True, root=env.data_root)
    test_set = load_split(data["dataset"], train=False, root=env.data_root)
    split = make_split(data["dataset"], len(train_set), len(test_set), data.get("n_train"), int(data["n_val"]),
                       data.get("n_test"), seed, source=train_set.source)
    logger.info("loaded %s (%s) in %.1fs: %d train / %d val / %d test", data["dataset"], train_set.source,
                time.perf_counter() - t0, len(split.train), len(split.val), len(split.test))
    if cfg.init_from:  # a finetune run: init_from names the run whose checkpoint it starts from
        cfg.init_from = str(paths.model_path(env.out, cfg.init_from))

    resume = paths.resume_path(env.out, run)
    result, diverged = train_or_last_finite(cfg, train_set.images(split.train), train_set.labels(split.train),
                                            train_set.images(split.val), train_set.labels(split.val),
                                            device=env.device, resume_path=resume, progress=progress)
    model = result.model
    x_test, y_test = test_set.images(split.test), test_set.labels(split.test)
    test_acc = accuracy(model, x_test.to(env.device), y_test.to(env.device))

    save_model(model.cpu(), paths.model_path(env.out, run), extra={"run": run, "config": asdict(cfg)})
    split.save(paths.split_path(env.out, run))
    history = pd.DataFrame(result.history)
    curve = paths.train_curve_path(env.out, run)
    curve.parent.mkdir(parents=True, exist_ok=True)
    history.to_csv(curve, index=False, float_format="%.6g")
    _log_dvclive(history, paths.dvclive_dir(env.out, run))
    last = result.history[-1]
    metrics = {
        "run": run,
        "dataset": data["dataset"],
        "data_source": train_set.source,
        "model": cfg.model,
        "objective": sorted(cfg.objective),
        "epochs": cfg.epochs,
        "epochs_completed": len(result.history),
        "diverged": diverged,
        "n_train": len(split.train),
        "n_test": len(split.test),
        "clean_acc": round(test_acc, 6),
        "val_acc": round(float(last["val_acc"]), 6),
        "train_minutes": round(result.train_seconds / 60.0, 4),
        "final_train_loss": round(float(last["train_loss"]), 6),
    }
    write_json(metrics, paths.train_metrics_path(env.out, run))
    resume.unlink(missing_ok=True)
    return metrics


def train_or_last_finite(cfg: TrainConfig, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                         y_val: torch.Tensor, *, device, resume_path: Path, progress: bool
                         ) -> tuple[TrainResult, dict[str, Any] | None]:
    """``robustlib.training.loop.train`` with its per-epoch checkpoint at ``resume_path``; if the loss turns
    non-finite after the first epoch, the result is the last finite epoch (that checkpoint, which the
    loop never writes from a failing epoch) and the second value says where training diverged:
    ``{"epoch", "message"}`` (1-based epoch of the failing step); ``None`` for a run that completed.
    Divergence in the first epoch re-raises: there is no model to keep."""
    try:
        return train(cfg, x_train, y_train, x_val, y_val, device=device, resume_path=resume_path,
                     progress=progress), None
    except NonFiniteLossError as err:
        if not resume_path.exists():
            raise
        blob = torch.load(resume_path, map_location=device, weights_only=True)
        if blob.get("key") != cfg.key():
            raise
        model = init_model(cfg, device)
        model.load_state_dict(blob["model"])
        model.eval()
        epoch = int(blob["epoch"])
        logger.warning("training diverged in epoch %d (%s); keeping the model of epoch %d", epoch + 1, err, epoch)
        return (TrainResult(model, list(blob["history"]), float(blob["seconds"]), epoch),
                {"epoch": epoch + 1, "message": str(err)})


def _log_dvclive(history: pd.DataFrame, live_dir) -> None:
    """Log the per-epoch history with dvclive (written afresh from the complete history, so a run that
    was interrupted and resumed logs every epoch exactly once)."""
    from dvclive import Live

    with Live(str(live_dir), resume=False, report=None, save_dvc_exp=False, dvcyaml=None) as live:
        for row in history.to_dict("records"):
            live.step = int(row["epoch"])
            for k, v in row.items():
                if k != "epoch":
                    live.log_metric(k, float(v))
