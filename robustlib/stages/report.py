"""The report stage: cross-run tables and figures and the one-page report.md under the profile's
output root (``reports/<profile>/`` under DVC), with the provenance of the results,
from the outputs of the train, attack, verify, ablations, laplacian and gallery stages and the benchmark
results files; and the compact per-run summaries of the train, attack and verify metrics that dvc.yaml
declares as the report's metrics (``robustlib.reporting.summary``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd

from robustlib.evaluation import schema
from robustlib.pipeline import paths, provenance
from robustlib.pipeline.io import atomic_write, read_json, write_json
from robustlib.pipeline.params import all_runs
from robustlib.reporting import paper, summary
from robustlib.reporting.curves import robustness_curves_figure
from robustlib.reporting.page import PAPER_FIGURES, VERIFICATION_FIGURE, paper_comparisons, report_markdown
from robustlib.reporting.paper_figures import beside_paper_figure, verification_figure
from robustlib.reporting.plots import learning_curves_figure, run_family, save_figure
from robustlib.reporting.tables import (
    attack_table,
    benchmark_table,
    certified_table,
    perceptual_settings,
    training_table,
    verification_table,
    write_table,
)
from robustlib.stages.common import input_dir, setup

logger = logging.getLogger(__name__)


def run(params_file: str = "params.yaml", output_root: str = ".", input_root: str | None = None) -> dict[str, Any]:
    """Write every cross-run table and figure, report.md and provenance.json under ``output_root``, from the
    other stages' outputs under ``input_root`` (default: ``output_root``); return the main tables."""
    env = setup(params_file, output_root, "report")
    out, inp, runs = env.out, input_dir(env, input_root), all_runs(env.params)
    tables, figures = paths.tables_dir(out), paths.figures_dir(out)
    train = [read_json(paths.train_metrics_path(inp, r)) for r in runs]
    attack = [read_json(paths.attack_metrics_path(inp, r)) for r in runs]
    verify = [read_json(paths.verify_metrics_path(inp, r)) for r in runs]

    t_train = training_table(train)
    write_table(t_train, tables / "train_summary")
    metrics = env.params.get("report", {}).get("curve_metrics", ["train_loss", "val_acc"])
    reference = env.params["attack"]["sanity"].get("undefended_run")
    families = {m["run"]: run_family(m["objective"]) for m in train}
    save_figure(learning_curves_figure({r: pd.read_csv(paths.train_curve_path(inp, r)) for r in runs}, metrics,
                                       families, reference), figures / "learning_curves.png")
    t1 = attack_table(train, attack)
    write_table(t1, tables / "table1_attacks")
    write_table(perceptual_settings(attack, reference), tables / "perceptual_settings")
    save_figure(robustness_curves_figure({r: schema.load_curve(paths.attack_curve_path(inp, r)) for r in runs},
                                         families, reference), figures / "robustness_curves.png")
    t2 = verification_table(verify, {m["run"]: m for m in attack})
    write_table(t2, tables / "table2_verification")
    write_table(certified_table(verify), tables / "certified")
    write_table(benchmark_table(env.root / "benchmarks" / "results"), tables / "benchmark_objectives")
    dataset = env.params["data"]["dataset"]
    comparisons = paper_comparisons(env.params, train, t1, t2, inp)
    milp = {r: schema.load_verify_results(paths.verify_results_path(inp, r)) for r in env.params["verify"]["milp_runs"]}
    save_figure(verification_figure(t2, comparisons["table2"][0], paper.TABLE2, milp, dataset),
                figures / VERIFICATION_FIGURE)
    ours = {"table1": t1, "table3": pd.read_csv(paths.tables_dir(inp) / "ablation_table3.csv"),
            "table4": pd.read_csv(paths.tables_dir(inp) / "laplacian_table4.csv")}
    for key, (name, columns) in PAPER_FIGURES.items():  # each paper table's figure: ours beside the paper's
        save_figure(beside_paper_figure(ours[key], columns, paper.TABLES[key], comparisons[key][0],
                                        f"{paper.TABLES[key].title} analog", dataset), figures / name)
    for kind, per_run in summary.summaries(train, attack, verify, dataset).items():
        for run, s in per_run.items():
            write_json(s, summary.summary_path(out, kind, run))
    write_table(pd.concat([c.assign(**{schema.PAPER_TABLE: paper.TABLES[k].title})
                           for k, (c, _) in comparisons.items()], ignore_index=True), tables / "paper_comparison")
    page = report_markdown(env.params, out, inp, comparisons, t_train)
    atomic_write(paths.report_path(out), lambda p: p.write_text(page))
    prov = provenance.record(env.root, params_file)
    atomic_write(paths.provenance_path(out), lambda p: p.write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n"))
    return {"train": t_train, "table1": t1, "table2": t2, "report": paths.report_path(out)}
