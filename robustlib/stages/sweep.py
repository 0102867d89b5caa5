"""The weight-sweep stages that train and evaluate one cell (``robustlib.pipeline.sweeps``).

* ``train_cell`` (``sweep_train@<cell>``): the cell's training (its base run's, with the sweep's weights, reading
  and ``stop_on_collapse``), resumable, with the probe diagnostics (``robustlib.training.runner.fit``);
* ``eval_cell`` (``sweep_eval@<cell>``): clean and PGD accuracy (L-inf, ``eval.steps`` x ``eval.restarts``, step
  2.5 eps / steps: the paper's evaluation) on the first ``eval.n_val`` validation images (selection), and on the
  first ``eval.n_test`` test examples of the attack stage's order when asked.

Selection and the report section are ``robustlib.stages.sweep_select``: this module imports no reporting code,
so a change to a figure never makes a trained cell stale.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from robustlib.attacks.gradient import pgd
from robustlib.data.datasets import Split, load_split
from robustlib.evaluation.accuracy import accuracy
from robustlib.evaluation.checks import check_points, robust_accuracy
from robustlib.pipeline import params as P
from robustlib.pipeline import paths
from robustlib.pipeline import sweeps as S
from robustlib.pipeline.io import file_digest, load_model, write_json
from robustlib.stages.common import setup
from robustlib.threat import ThreatModel
from robustlib.training.runner import RunFiles, fit

logger = logging.getLogger(__name__)


def train_cell(cell: str, params_file: str = "params.yaml", output_root: str = ".", progress: bool = True
               ) -> dict[str, Any]:
    """Train sweep cell ``cell``; write its model and split (``runs/<cell>/``, as a run's), history, dvclive log
    and metrics (``sweeps.cell_*_path``); return the metrics. A cell whose loss turns non-finite in its first
    epoch is recorded (``trained: false``), not raised: it is a result of the sweep."""
    env = setup(params_file, output_root, f"sweep_train@{cell}")
    spec = env.params["sweep_cells"][cell]
    sweep = spec["sweep"]
    cfg = P.cell_config(env.params, cell)
    files = RunFiles(model=paths.model_path(env.out, cell), split=paths.split_path(env.out, cell),
                     resume=paths.resume_path(env.out, cell), curve=S.cell_curve_path(env.out, sweep, cell),
                     dvclive=S.cell_dvclive_dir(env.out, cell), metrics=S.cell_train_metrics_path(env.out, sweep, cell))
    weights = {k: v["weight"] for k, v in cfg.objective.items() if k in ("hamming", "stability")}
    extra = {"sweep": sweep, "gamma_h": weights["hamming"], "gamma_s": weights["stability"],
             "gamma_h_factor": spec["gamma_h_factor"], "gamma_s_factor": spec["gamma_s_factor"],
             "reading": spec["reading"], "base_run": spec["base_run"]}
    return fit(cell, cfg, env.params["data"], int(env.params["base"]["seed"]), env.data_root, env.device, files,
               progress, extra_metrics=extra, keep_untrained=True)


def _clean_and_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ev: dict, seed: int) -> dict[str, Any]:
    threat = ThreatModel("linf", float(ev["eps"]))
    gen = torch.Generator().manual_seed(int(seed))
    x_adv = pgd(model, x, y, threat, steps=int(ev["steps"]), restarts=int(ev["restarts"]), generator=gen).points
    check_points(x, x_adv, threat, "pgd")
    return {"n": int(y.shape[0]), "clean_acc": round(accuracy(model, x, y), 6),
            "pgd_acc": round(robust_accuracy(model, x, y, x_adv), 6)}


def eval_cell(cell: str, params_file: str = "params.yaml", output_root: str = ".") -> dict[str, Any]:
    """Clean and PGD accuracy of sweep cell ``cell`` on its validation images (and test examples when
    ``eval.n_test`` > 0); write and return them, with the md5 of the model evaluated."""
    env = setup(params_file, output_root, f"sweep_eval@{cell}")
    sweep = env.params["sweep_cells"][cell]["sweep"]
    ev = dict(env.params["sweeps"][sweep]["eval"].items())
    seed = int(env.params["base"]["seed"])
    model_file = paths.model_path(env.out, cell)
    model = load_model(model_file, env.device)
    split = Split.load(paths.split_path(env.out, cell))
    if ev["n_val"] > len(split.val):
        raise ValueError(f"sweeps.{sweep}.eval.n_val {ev['n_val']} exceeds the split's {len(split.val)} "
                         "validation images")
    val_idx = split.val[: ev["n_val"]]
    train_set = load_split(split.dataset, train=True, root=env.data_root)
    x, y = train_set.images(val_idx).to(env.device), train_set.labels(val_idx).to(env.device)
    out: dict[str, Any] = {"cell": cell, "sweep": sweep, "model_md5": file_digest(model_file, "md5"), "eval": ev,
                           "val": _clean_and_pgd(model, x, y, ev, seed)}
    if ev["n_test"]:
        xt, yt, _ = split.test_examples(int(ev["n_test"]), env.data_root)
        out["test"] = _clean_and_pgd(model, xt.to(env.device), yt.to(env.device), ev, seed)
    logger.info("%s: %s", cell, {k: out[k] for k in ("val", "test") if k in out})
    write_json(out, S.cell_eval_path(env.out, sweep, cell))
    return out

