"""The train stage: one named run from params.yaml -> checkpoint, split, metrics, learning curve."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import pandas as pd

from robustlib import paths
from robustlib.data import load_split, make_split
from robustlib.evaluate import accuracy
from robustlib.io import save_model, write_json
from robustlib.params import run_config
from robustlib.stages.common import setup
from robustlib.train import train

logger = logging.getLogger(__name__)


def run(run: str, params_file: str = "params.yaml", output_root: str = ".", progress: bool = True) -> dict[str, Any]:
    """Train named run ``run`` and write its outputs (see ``robustlib.paths``); return its metrics.

    Resumes from the run's per-epoch checkpoint if an earlier attempt with the same configuration
    was interrupted; deletes that checkpoint once the run has completed.
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
    result = train(cfg, train_set.images(split.train), train_set.labels(split.train),
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
