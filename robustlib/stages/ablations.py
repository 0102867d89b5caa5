"""The ablations stage (paper Table 3): hamming+stability vs stability only vs hamming only vs PGD-AT
vs FGSM-AT, clean and robust accuracy from the attack stage's per-example results, and a sweep of
regularization strength (gamma_H, gamma_S) with clean vs robust accuracy and training minutes."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from robustlib.evaluation import schema
from robustlib.pipeline import paths
from robustlib.pipeline.params import run_config
from robustlib.reporting.figures import sweep_figure
from robustlib.reporting.plots import save_figure
from robustlib.reporting.tables import run_summary, write_table
from robustlib.stages.common import input_dir, setup

logger = logging.getLogger(__name__)


def run(params_file: str = "params.yaml", output_root: str = ".", input_root: str | None = None) -> dict[str, Any]:
    """Write Table 3 and the sweep (table and figure) under ``output_root`` from the per-run results
    under ``input_root`` (default: ``output_root``)."""
    env = setup(params_file, output_root, "ablations")
    inp = input_dir(env, input_root)
    ab = env.params["ablations"]
    for r in [*ab["table_runs"], *ab["sweep_runs"]]:
        if r not in env.params["runs"]:
            raise ValueError(f"ablations: unknown run {r!r}; runs: {sorted(env.params['runs'])}")
    table = pd.DataFrame([run_summary(inp, r) for r in ab["table_runs"]]).round(2)
    write_table(table, paths.tables_dir(env.out) / "ablation_table3")
    sweep_rows = []
    for r in ab["sweep_runs"]:
        cfg = run_config(env.params, r)
        gamma = {k: (v["weight"] if isinstance(v, dict) else float(v)) for k, v in cfg.objective.items()}
        sweep_rows.append({**run_summary(inp, r), schema.GAMMA_H: gamma.get("hamming", 0.0),
                           schema.GAMMA_S: gamma.get("stability", 0.0)})
    sweep = pd.DataFrame(sweep_rows).round(3)
    write_table(sweep, paths.tables_dir(env.out) / "ablation_sweep")
    fig = save_figure(sweep_figure(sweep), paths.figures_dir(env.out) / "ablation_sweep.png")
    return {"table": table, "sweep": sweep, "figure": fig}
