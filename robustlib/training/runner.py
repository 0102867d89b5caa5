"""One named training run, start to finish, as the pipeline runs it: load the data and its seeded split, train
with a per-epoch checkpoint (resume), keep the last finite epoch of a run that diverges, and write the model,
split, learning curve (with the probe diagnostics, ``robustlib.training.diagnostics``), dvclive log and metrics.

The train stage (``runs``) and the sweep's train stage (``sweep_cells``) both call ``fit``; they differ only in
where the files go (``RunFiles``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from robustlib.data.datasets import ImageData, Split, load_split, make_split
from robustlib.evaluation.accuracy import accuracy
from robustlib.pipeline.io import save_model, write_json
from robustlib.training.loop import NonFiniteLossError, TrainConfig, TrainResult, init_model, train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFiles:
    """Where one run's outputs go."""

    model: Path
    split: Path
    resume: Path
    curve: Path
    dvclive: Path
    metrics: Path


def fit(name: str, cfg: TrainConfig, data: dict[str, Any], seed: int, data_root: Path, device: torch.device,
        files: RunFiles, progress: bool = True, extra_metrics: dict[str, Any] | None = None,
        keep_untrained: bool = False) -> dict[str, Any]:
    """Train run ``name`` (``cfg``) on ``data`` (the params' data section) with the split of ``seed``, write its
    ``files`` and return its metrics.

    Resumes from ``files.resume`` if an earlier attempt with the same configuration was interrupted; deletes it
    once the run has completed. A run whose loss turns non-finite after its first epoch is a result, not a crash:
    its outputs are those of the last finite epoch and its metrics say where it diverged (``diverged``). A run
    with ``stop_on_collapse`` stops once its predictions have been constant that long; its metrics carry
    ``collapsed_epoch`` (the first epoch of the constant streak; null if it did not collapse).
    ``keep_untrained``: a run whose loss turns non-finite in its FIRST epoch (no trained model to keep) is
    recorded too -- its initial weights, an empty history, ``trained: false`` -- instead of raising (a sweep cell:
    a result of the sweep); the metrics of every run then carry ``trained``.
    """
    train_set, test_set, split = _load_data(data, seed, data_root)
    try:
        result, diverged = train_or_last_finite(cfg, train_set.images(split.train), train_set.labels(split.train),
                                                train_set.images(split.val), train_set.labels(split.val),
                                                device=device, resume_path=files.resume, progress=progress)
    except NonFiniteLossError as err:
        if not keep_untrained:
            raise
        logger.warning("training diverged in epoch 1 (%s); recording the untrained model", err)
        result, diverged = TrainResult(init_model(cfg, device).eval(), [], 0.0), {"epoch": 1, "message": str(err)}
    model = result.model
    x_test, y_test = test_set.images(split.test), test_set.labels(split.test)
    test_acc = accuracy(model, x_test.to(device), y_test.to(device))

    _save_run(name, cfg, model, split, result.history, files)
    last = result.history[-1] if result.history else {"val_acc": None, "train_loss": None}
    metrics = {
        "run": name,
        "dataset": data["dataset"],
        "data_source": train_set.source,
        "model": cfg.model,
        "objective": sorted(cfg.objective),
        "epochs": cfg.epochs,
        "epochs_completed": len(result.history),
        "diverged": diverged,
        **({"collapsed_epoch": result.collapsed_epoch} if cfg.stop_on_collapse else {}),
        "n_train": len(split.train),
        "n_test": len(split.test),
        "clean_acc": round(test_acc, 6),
        "val_acc": _rounded(last["val_acc"]),
        "train_minutes": round(result.train_seconds / 60.0, 4),
        "final_train_loss": _rounded(last["train_loss"]),
        **({"trained": bool(result.history)} if keep_untrained else {}),
        **(extra_metrics or {}),
    }
    write_json(metrics, files.metrics)
    files.resume.unlink(missing_ok=True)
    return metrics


def _load_data(data: dict[str, Any], seed: int, data_root: Path) -> tuple[ImageData, ImageData, Split]:
    """The train and test sets of ``data`` (the params' data section) and their split for ``seed``."""
    t0 = time.perf_counter()
    train_set = load_split(data["dataset"], train=True, root=data_root)
    test_set = load_split(data["dataset"], train=False, root=data_root)
    split = make_split(data["dataset"], len(train_set), len(test_set), data.get("n_train"), int(data["n_val"]),
                       data.get("n_test"), seed, source=train_set.source)
    logger.info("loaded %s (%s) in %.1fs: %d train / %d val / %d test", data["dataset"], train_set.source,
                time.perf_counter() - t0, len(split.train), len(split.val), len(split.test))
    return train_set, test_set, split


def _save_run(name: str, cfg: TrainConfig, model: nn.Module, split: Split, history: list[dict[str, float]],
              files: RunFiles) -> None:
    """Write run ``name``'s model (moved to the CPU), split, learning curve and dvclive log to ``files``."""
    save_model(model.cpu(), files.model, extra={"run": name, "config": cfg.record()})
    split.save(files.split)
    curve = pd.DataFrame(history, columns=None if history else ["epoch"])
    files.curve.parent.mkdir(parents=True, exist_ok=True)
    curve.to_csv(files.curve, index=False, float_format="%.6g")
    log_dvclive(curve, files.dvclive)


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


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


def log_dvclive(history: pd.DataFrame, live_dir: Path) -> None:
    """Log the per-epoch history with dvclive (written afresh from the complete history, so a run that
    was interrupted and resumed logs every epoch exactly once; diagnostics included)."""
    from dvclive import Live

    with Live(str(live_dir), resume=False, report=None, save_dvc_exp=False, dvcyaml=None) as live:
        for row in history.to_dict("records"):
            live.step = int(row["epoch"])
            for k, v in row.items():
                if k != "epoch":
                    live.log_metric(k, float(v))
