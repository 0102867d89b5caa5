"""The weight-sweep stages over a whole sweep (``robustlib.pipeline.sweeps``), after its cells are evaluated.

* ``select`` (``sweep_select@<sweep>``): the selection rule (``sweeps.best``), the ``readings_at`` check, and
  AutoAttack on the selected cell when the sweep asks;
* ``report`` (``sweep_report@<sweep>``): the check of the seeded runs, the accuracy heatmap with the reference
  runs, the diagnostics figure, the table and the summary the report stage renders.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from robustlib.attacks.autoattack import autoattack
from robustlib.data.datasets import Split
from robustlib.evaluation.accuracy import accuracy
from robustlib.evaluation.checks import check_points, robust_accuracy
from robustlib.pipeline import params as P
from robustlib.pipeline import paths
from robustlib.pipeline import sweeps as S
from robustlib.pipeline.io import file_digest, load_model, read_json, write_json
from robustlib.regularizers.manifold import READINGS
from robustlib.reporting.plots import save_figure
from robustlib.reporting.sweep import (
    accuracy_figure,
    cells_table,
    collapse_routes,
    diagnostics_figure,
    references_table,
)
from robustlib.reporting.tables import write_table
from robustlib.stages.common import input_dir, setup
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)



def _row(out: Path, params: dict, cell: str) -> dict[str, Any]:
    spec = params["sweep_cells"][cell]
    sweep = spec["sweep"]
    tm, em = read_json(S.cell_train_metrics_path(out, sweep, cell)), read_json(S.cell_eval_path(out, sweep, cell))
    row = {"cell": cell, "gamma_h": tm["gamma_h"], "gamma_s": tm["gamma_s"],
           "gamma_h_factor": spec["gamma_h_factor"], "gamma_s_factor": spec["gamma_s_factor"],
           "reading": spec["reading"], "trained": bool(tm.get("trained", True)),
           "collapsed_epoch": tm.get("collapsed_epoch"),
           "diverged_epoch": (tm.get("diverged") or {}).get("epoch"), "epochs_completed": tm["epochs_completed"],
           "train_minutes": tm["train_minutes"], "val_clean_acc": em["val"]["clean_acc"],
           "val_pgd_acc": em["val"]["pgd_acc"], "model_md5": em["model_md5"]}
    if "test" in em:
        row.update(test_clean_acc=em["test"]["clean_acc"], test_pgd_acc=em["test"]["pgd_acc"], n_test=em["test"]["n"])
    return row


def select(sweep: str, params_file: str = "params.yaml", output_root: str = ".") -> dict[str, Any]:
    """Select the best cell of ``sweep`` (``sweeps.best``), check ``readings_at`` against the best grid cell
    (fails when it names another cell), run AutoAttack on the selected cell if the sweep asks, and write the
    selection (every cell's row, the best grid cell, the selected cell and its setting)."""
    env = setup(params_file, output_root, f"sweep_select@{sweep}")
    spec = env.params["sweeps"][sweep]
    rows = [_row(env.out, env.params, c) for c in S.cells_of(env.params, sweep)]
    default = [r for r in rows if r["reading"] == S.DEFAULT_READING]
    best_grid = S.best(default)
    problem = S.check_readings_at(spec, best_grid)
    if problem:
        raise ValueError(f"sweeps.{sweep}: {problem}")
    chosen = S.best(rows)
    pending = [r for r in spec.get("readings") or [] if not spec.get("readings_at")]
    selection: dict[str, Any] = {
        "sweep": sweep, "cells": rows, "rule": "best validation PGD accuracy among trained, non-collapsed cells; "
        "ties: better validation clean accuracy, then the earlier cell (factors as listed, grid before readings)",
        "best_grid_cell": best_grid["cell"] if best_grid else None,
        "selected": chosen["cell"] if chosen else None,
        "selected_setting": ({k: chosen[k] for k in ("gamma_h", "gamma_s", "gamma_h_factor", "gamma_s_factor",
                                                    "reading")} if chosen else None),
        "readings_pending": pending,  # readings to train at the best grid cell: set readings_at to it
    }
    aa = spec.get("autoattack")
    if aa and chosen:
        selection["autoattack"] = _autoattack(env, sweep, chosen, dict(aa.items()), float(spec["eval"]["eps"]))
    if chosen is None:
        logger.warning("sweep %s: no cell is eligible (every cell collapsed or diverged in its first epoch)", sweep)
    write_json(selection, S.selection_path(env.out, sweep))
    return selection


def _autoattack(env, sweep: str, chosen: dict, aa: dict, eps: float) -> dict[str, Any]:
    """AutoAttack on the selected cell's model; its file must be the one the eval stage evaluated (the md5
    in its eval record, which is what this stage depends on)."""
    cell = chosen["cell"]
    model_file = paths.model_path(env.out, cell)
    if file_digest(model_file, "md5") != chosen["model_md5"]:
        raise ValueError(f"{model_file} is not the model sweep_eval@{cell} evaluated: rerun the sweep stages")
    model = load_model(model_file, env.device)
    x, y, _ = Split.load(paths.split_path(env.out, cell)).test_examples(int(aa["n_test"]), env.data_root)
    x, y = x.to(env.device), y.to(env.device)
    threat = ThreatModel("linf", eps)
    res = autoattack(model, x, y, threat, version=aa.get("version", "standard"), seed=int(env.params["base"]["seed"]))
    check_points(x, res.points, threat, "autoattack")
    return {"cell": cell, "n": int(y.shape[0]), "version": aa.get("version", "standard"), "eps": eps,
            "clean_acc": round(accuracy(model, x, y), 6), "aa_acc": round(robust_accuracy(model, x, y, res.points), 6),
            "info": {k: v for k, v in res.info.items() if isinstance(v, (bool, int, float, str))}}


def _reference(inp: Path, run: str) -> dict[str, Any]:
    """A reference run's clean and L-inf robust accuracy from its attack metrics (test examples)."""
    m = read_json(paths.attack_metrics_path(inp, run))
    return {"run": run, "n": m.get("n"), **{k: m.get(k) for k in ("clean_acc", "pgd_linf_acc", "aa_linf_acc",
                                                                         "worst_linf_acc")}}


def _seeded(inp: Path, run: str) -> dict[str, Any]:
    """A seeded run's attack and verification results, or what is pending."""
    out: dict[str, Any] = {"run": run}
    for kind, path in (("attack", paths.attack_metrics_path(inp, run)),
                       ("verify", paths.verify_metrics_path(inp, run))):
        if not path.exists():
            out[kind] = "pending"
            continue
        m = read_json(path)
        if kind == "attack":
            out.update({k: m.get(k) for k in ("clean_acc", "pgd_linf_acc", "aa_linf_acc", "worst_linf_acc")})
        else:
            out["verified"] = {eps: e.get("verified_fraction") for eps, e in (m.get("eps") or {}).items()}
    return out


def report(sweep: str, params_file: str = "params.yaml", output_root: str = ".", input_root: str | None = None
           ) -> dict[str, Any]:
    """Check that the profile's ``seeded_runs`` carry the selected setting (fails otherwise), then write the
    sweep's accuracy heatmap, diagnostics figure, table and the summary the report stage renders."""
    env = setup(params_file, output_root, f"sweep_report@{sweep}")
    inp = input_dir(env, input_root)
    spec = env.params["sweeps"][sweep]
    selection = read_json(S.selection_path(inp, sweep))
    problems = S.check_seeded_runs(env.params, sweep, selection["selected"], partial(P.config_of, env.params))
    if problems:
        raise ValueError(f"sweeps.{sweep}: " + "; ".join(problems))
    rows = selection["cells"]
    references = [_reference(inp, r) for r in spec.get("references") or []]
    curves = {r["cell"]: pd.read_csv(S.cell_curve_path(inp, sweep, r["cell"])) for r in rows}
    table = cells_table(rows)
    write_table(table, S.table_stem(env.out, sweep))
    acc_fig = save_figure(accuracy_figure(rows, spec["gamma_h"], spec["gamma_s"], references, selection["selected"],
                                          float(spec["eval"]["eps"])),
                          S.accuracy_figure_path(env.out, sweep))
    collapsed = {r["cell"]: r["collapsed_epoch"] for r in rows}
    diag_fig = save_figure(diagnostics_figure(curves, collapsed), S.diagnostics_figure_path(env.out, sweep))
    seeded = [_seeded(inp, r) for r in spec.get("seeded_runs") or []]
    objectives = {r["cell"]: P.cell_config(env.params, r["cell"]).objective for r in rows}
    summary = {
        "sweep": sweep, "base_run": spec["base_run"], "paper_point": {"gamma_h": spec["gamma_h"],
                                                                      "gamma_s": spec["gamma_s"]},
        "grid": spec.get("grid", "product"), "eval": dict(spec["eval"].items()), "rule": selection["rule"],
        "best_grid_cell": selection["best_grid_cell"], "selected": selection["selected"],
        "selected_setting": selection["selected_setting"], "readings_pending": selection["readings_pending"],
        "readings": {r: READINGS[r] for r in [S.DEFAULT_READING, *(spec.get("readings") or [])]},
        "autoattack": selection.get("autoattack"), "cells": table.to_dict("records"),
        "cell_columns": list(table.columns), "objectives": objectives,
        "stop_on_collapse": int((spec.get("train") or {}).get("stop_on_collapse", 0)),
        "references": references, "reference_table": references_table(references).to_dict("records"),
        "seeds": list(spec.get("seeds") or []), "seeded_runs": seeded,
        "collapse_routes": collapse_routes(curves, collapsed),
        "figures": {"accuracy": S.accuracy_figure_path(Path("."), sweep).as_posix(),
                    "diagnostics": S.diagnostics_figure_path(Path("."), sweep).as_posix()},
        "table": S.table_stem(Path("."), sweep).with_suffix(".md").as_posix(),
    }
    write_json(summary, S.summary_path(env.out, sweep))
    return {"table": table, "summary": summary, "figures": [acc_fig, diag_fig]}
