"""The train stage: one named run from params.yaml -> checkpoint, split, metrics, learning curve
(``robustlib.training.runner.fit``)."""

from __future__ import annotations

import logging
from typing import Any

from robustlib.pipeline import paths
from robustlib.pipeline.params import run_config
from robustlib.stages.common import setup
from robustlib.training.runner import RunFiles, fit

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
    if cfg.init_from:  # a finetune run: init_from names the run whose checkpoint it starts from
        cfg.init_from = str(paths.model_path(env.out, cfg.init_from))
    files = RunFiles(model=paths.model_path(env.out, run), split=paths.split_path(env.out, run),
                     resume=paths.resume_path(env.out, run), curve=paths.train_curve_path(env.out, run),
                     dvclive=paths.dvclive_dir(env.out, run), metrics=paths.train_metrics_path(env.out, run))
    return fit(run, cfg, env.params["data"], int(env.params["base"]["seed"]), env.data_root, env.device, files,
               progress)
