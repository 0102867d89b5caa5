"""The weight-sweep stages (``robustlib.pipeline.sweeps``): train one cell, evaluate one cell, select the best
cell of a sweep, and write the sweep's figures, table and report section.

* ``train_cell`` (``sweep_train@<cell>``): the cell's training (its base run's, with the sweep's weights, reading
  and ``stop_on_collapse``), resumable, with the probe diagnostics (``robustlib.training.runner.fit``);
* ``eval_cell`` (``sweep_eval@<cell>``): clean and PGD accuracy (L-inf, ``eval.steps`` x ``eval.restarts``, step
  2.5 eps / steps: the paper's evaluation) on the first ``eval.n_val`` validation images (selection), and on the
  first ``eval.n_test`` test examples of the attack stage's order when asked;
* ``select`` (``sweep_select@<sweep>``): the selection rule (``sweeps.best``), the ``readings_at`` check, and
  AutoAttack on the selected cell when the sweep asks;
* ``report`` (``sweep_report@<sweep>``): the check of the seeded runs, the accuracy heatmap with the reference
  runs, the diagnostics figure, the table and the summary the report stage renders.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robustlib.attacks import autoattack, pgd
from robustlib.data.datasets import Split, load_split
from robustlib.evaluation.accuracy import accuracy
from robustlib.evaluation.checks import check_points, robust_accuracy
from robustlib.pipeline import paths
from robustlib.pipeline import sweeps as S
from robustlib.pipeline.io import load_model, read_json, write_json
from robustlib.regularizers.manifold import READINGS
from robustlib.reporting.sweep import accuracy_figure, cells_table, diagnostics_figure, references_table
from robustlib.reporting.tables import save_figure, write_table
from robustlib.stages.common import input_dir, setup
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
    cfg = S.cell_config(env.params, cell)
    files = RunFiles(model=paths.model_path(env.out, cell), split=paths.split_path(env.out, cell),
                     resume=paths.resume_path(env.out, cell), curve=S.cell_curve_path(env.out, sweep, cell),
                     dvclive=S.cell_dvclive_dir(env.out, cell), metrics=S.cell_train_metrics_path(env.out, sweep, cell))
    weights = {k: v["weight"] for k, v in cfg.objective.items() if k in ("hamming", "stability")}
    extra = {"sweep": sweep, "gamma_h": weights["hamming"], "gamma_s": weights["stability"],
             "gamma_h_factor": spec["gamma_h_factor"], "gamma_s_factor": spec["gamma_s_factor"],
             "reading": spec["reading"], "base_run": spec["base_run"]}
    return fit(cell, cfg, env.params["data"], int(env.params["base"]["seed"]), env.data_root, env.device, files,
               progress, extra_metrics=extra, keep_untrained=True)


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


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
    out: dict[str, Any] = {"cell": cell, "sweep": sweep, "model_md5": _md5(model_file), "eval": ev,
                           "val": _clean_and_pgd(model, x, y, ev, seed)}
    if ev["n_test"]:
        xt, yt, _ = split.test_examples(int(ev["n_test"]), env.data_root)
        out["test"] = _clean_and_pgd(model, xt.to(env.device), yt.to(env.device), ev, seed)
    logger.info("%s: %s", cell, {k: out[k] for k in ("val", "test") if k in out})
    write_json(out, S.cell_eval_path(env.out, sweep, cell))
    return out


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
    if _md5(model_file) != chosen["model_md5"]:
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
    problems = S.check_seeded_runs(env.params, sweep, selection["selected"])
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
    diag_fig = save_figure(diagnostics_figure(curves, {r["cell"]: r["collapsed_epoch"] for r in rows}),
                           S.diagnostics_figure_path(env.out, sweep))
    seeded = [_seeded(inp, r) for r in spec.get("seeded_runs") or []]
    objectives = {r["cell"]: S.cell_config(env.params, r["cell"]).objective for r in rows}
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
        "figures": {"accuracy": S.accuracy_figure_path(Path("."), sweep).as_posix(),
                    "diagnostics": S.diagnostics_figure_path(Path("."), sweep).as_posix()},
        "table": S.table_stem(Path("."), sweep).with_suffix(".md").as_posix(),
    }
    write_json(summary, S.summary_path(env.out, sweep))
    return {"table": table, "summary": summary, "figures": [acc_fig, diag_fig]}
