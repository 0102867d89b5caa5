"""The lpips stage: train the fixed LPIPS network of the NPTM attacks (LPA, PPGD).

Laidlaw et al. (2021) bound CIFAR-10 NPTM attacks with ``alexnet_cifar``, a classifier trained on
CIFAR-10 whose checkpoint perceptual-advex downloads. Nothing can be downloaded here, so this stage
trains that architecture (``robustlib.models.AlexNetCIFAR``; a narrower analogue for MNIST, set in the
profile) with cross-entropy on the dataset's training split, the same split and seed as every run,
and records its test accuracy and the checkpoint's SHA-256 with every attack result that uses it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from robustlib.data.datasets import load_split, make_split
from robustlib.evaluation.accuracy import accuracy
from robustlib.pipeline import paths
from robustlib.pipeline.io import file_digest, save_model, write_json
from robustlib.pipeline.params import lpips_config
from robustlib.stages.common import setup
from robustlib.training.loop import train

logger = logging.getLogger(__name__)


def run(params_file: str = "params.yaml", output_root: str = ".", progress: bool = True) -> dict[str, Any]:
    """Train the LPIPS network and write its checkpoint and metrics; return the metrics."""
    env = setup(params_file, output_root, "lpips")
    cfg = lpips_config(env.params)
    data = env.params["data"]
    t0 = time.perf_counter()
    train_set = load_split(data["dataset"], train=True, root=env.data_root)
    test_set = load_split(data["dataset"], train=False, root=env.data_root)
    split = make_split(data["dataset"], len(train_set), len(test_set), data.get("n_train"), int(data["n_val"]),
                       data.get("n_test"), cfg.seed, source=train_set.source)
    result = train(cfg, train_set.images(split.train), train_set.labels(split.train),
                   train_set.images(split.val), train_set.labels(split.val), device=env.device,
                   resume_path=paths.lpips_resume_path(env.out), progress=progress)
    model = result.model
    test_acc = accuracy(model, test_set.images(split.test).to(env.device), test_set.labels(split.test).to(env.device))
    out = paths.lpips_model_path(env.out)
    save_model(model.cpu(), out, extra={"config": cfg.record()})  # record(): the config as saved before later options
    paths.lpips_resume_path(env.out).unlink(missing_ok=True)
    shape = {k: v for k, v in cfg.model_kwargs.items() if k not in ("mean", "std")}
    metrics = {"model": cfg.model, "model_kwargs": shape,
               "epochs": cfg.epochs, "test_acc": test_acc, "val_acc": result.history[-1].get("val_acc"),
               "sha256": file_digest(out), "train_minutes": round(result.train_seconds / 60, 3),
               "minutes": round((time.perf_counter() - t0) / 60, 3)}
    write_json(metrics, paths.lpips_metrics_path(env.out))
    logger.info("LPIPS network %s: test accuracy %.4f", cfg.model, test_acc)
    return metrics
