"""The report stage: cross-run tables and figures and the one-page report.md under the profile's
output root (``reports/<profile>/`` under DVC), with the provenance of the results,
from the outputs of the train, attack, verify, ablations and laplacian stages and the benchmark
results files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from robustlib.pipeline import paths, provenance
from robustlib.pipeline.io import atomic_write, read_json
from robustlib.pipeline.params import all_runs
from robustlib.reporting import paper
from robustlib.reporting.sweep import sweep_sections
from robustlib.reporting.tables import (
    attack_table,
    describe_objective,
    learning_curves_figure,
    per_example_outcomes,
    perceptual_settings,
    robustness_curves_figure,
    run_family,
    save_figure,
    training_table,
    verification_figure,
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
    save_figure(robustness_curves_figure({r: pd.read_csv(paths.attack_curve_path(inp, r)) for r in runs},
                                         families, reference), figures / "robustness_curves.png")
    t2 = verification_table(verify, {m["run"]: m for m in attack})
    write_table(t2, tables / "table2_verification")
    milp = {r: pd.read_csv(paths.verify_results_path(inp, r)) for r in env.params["verify"]["milp_runs"]}
    save_figure(verification_figure(milp), figures / "verification.png")
    certified = pd.DataFrame([{"run": m["run"], **{f"ibp_certified_%@{eps}": round(100 * e["ibp_certified_acc"], 2)
                                                   for eps, e in m["eps"].items()},
                               **({"lipschitz_L": round(m["lipschitz_l2"]["L"], 3),
                                   "lipschitz_certified_l2_%": round(100 * m["lipschitz_l2"]["certified_acc_at_l2_eps"],
                                                                     2)}
                                  if "lipschitz_l2" in m else {})} for m in verify])
    write_table(certified, tables / "certified")
    write_table(benchmark_table(env.root / "benchmarks" / "results"), tables / "benchmark_objectives")
    comparisons = paper_comparisons(env.params["data"]["dataset"], train, t1, t2, inp)
    write_table(pd.concat([c.assign(table=paper.TABLES[k].title) for k, (c, _) in comparisons.items()],
                          ignore_index=True), tables / "paper_comparison")
    page = _report_markdown(env.params, out, inp, comparisons, t_train)
    atomic_write(paths.report_path(out), lambda p: p.write_text(page))
    prov = provenance.record(env.root, params_file)
    atomic_write(paths.provenance_path(out), lambda p: p.write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n"))
    return {"train": t_train, "table1": t1, "table2": t2, "report": paths.report_path(out)}


def paper_comparisons(dataset: str, train: list[dict], t1: pd.DataFrame, t2: pd.DataFrame, inp: Path
                      ) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Our numbers beside each of the paper's tables (``robustlib.reporting.paper.compare``): Table 1 from our
    Table 1 analogue, Table 2 from the verification rows at 8/255, Tables 3-4 from the ablations and
    laplacian stages' tables, Appendix B from the neighbour statistics."""
    models = {m["run"]: m["model"] for m in train}
    tables = paths.tables_dir(inp)
    at_8 = t2[(t2["eps"] - paper.PAPER_EPS).abs() < 1e-6] if len(t2) else t2
    stats = read_json(tables / "neighbour_stats.json")
    ours = {"table1": t1.set_index("run"), "table2": at_8.set_index("run") if len(at_8) else pd.DataFrame(),
            "table3": pd.read_csv(tables / "ablation_table3.csv").set_index("run"),
            "table4": pd.read_csv(tables / "laplacian_table4.csv").set_index("run"),
            "appendix_b": pd.DataFrame([{k: stats[k] for k in ("mean", "median", "p10")}], index=["data"])}
    def outcomes(run: str, metric: str) -> pd.Series | None:
        return per_example_outcomes(inp, run, metric, paper.PAPER_EPS)

    return {key: paper.compare(paper.TABLES[key], ours[key], models, dataset, outcomes) for key in paper.TABLES}


def benchmark_table(folder: Path) -> pd.DataFrame:
    """Seconds per training step and ratio to a plain step for every objective (from
    benchmarks/results/objectives.json, written by benchmarks/bench_objectives.py)."""
    f = folder / "objectives.json"
    if not f.exists():
        raise FileNotFoundError(f"missing {f}: run `python benchmarks/bench_objectives.py` (it is committed with "
                                "the repository; the report shows its table)")
    data = json.loads(f.read_text())
    rows = []
    for model, res in data["results"].items():
        for name, sec in res["seconds_per_step"].items():
            rows.append({"model": model, "objective": name, "ms_per_step": round(1e3 * sec, 2),
                         "x_plain": round(sec / res["seconds_per_step"]["plain"], 2)})
    return pd.DataFrame(rows)


def _lpips_note(inp: Path) -> str:
    f = paths.lpips_metrics_path(inp)
    if not f.exists():
        return "not trained (no NPTM attack run)"
    m = json.loads(f.read_text())
    return (f"self-trained by the lpips stage (`{m['model']}` {m['model_kwargs']}, {m['epochs']} epoch(s) on the "
            f"training split, test accuracy {100 * m['test_acc']:.1f}%, sha256 {m['sha256'][:12]}; perceptual-advex "
            "downloads its alexnet_cifar, which cannot be done here)")


def _section(title: str, md_table: Path, out: Path, note: str = "") -> list[str]:
    body = md_table.read_text() if md_table.exists() else f"_missing: {md_table.relative_to(out)}_\n"
    return [f"## {title}", "", body, f"Source: `{md_table.relative_to(out).with_suffix('.csv')}`. {note}", ""]


def _our_setting(params: dict, t_train: pd.DataFrame, key: str, inp: Path) -> str:
    """Our setting in the words the paper's table uses (network, data, training, examples, attack)."""
    data, ap, vp = params["data"], params["attack"], params["verify"]
    runs = [r for r in paper.TABLES[key].rows if r in set(t_train["run"])]
    tr = t_train.set_index("run").loc[runs] if runs else t_train.iloc[:0]
    def joined(column: str) -> str:
        return "/".join(str(v) for v in sorted(set(tr[column])))

    trained = (f"{joined('model')}, {data['dataset']}, {joined('epochs')} epoch(s) on {joined('n_train')} training "
               "images" if len(tr) else f"{data['dataset']}, none of the paper's runs in this profile")
    objectives = "; ".join(f"{r} = {describe_objective(params['runs'][r]['objective'])}" for r in runs
                           if (params["runs"].get(r) or {}).get("objective"))
    if objectives:
        trained += f" (objectives: {objectives})"
    if key == "table1":
        return (f"{trained}; {ap['n_test']} test images (a seeded random sample); AutoAttack "
                f"{ap['autoattack_version']} (the paper: "
                "AutoAttack+, full), linf_worst = the worst case over FGSM, PGD, AutoAttack and transfer; L2 eps "
                f"{ap['l2_eps']}; minutes on {params['base'].get('threads', 2)} CPU threads")
    if key == "table2":
        return (f"{trained}; {vp['n_test']} test images (a seeded random sample); PGD "
                f"{vp['pgd_steps']}x{vp['pgd_restarts']} before "
                f"the MILP; {vp['solver']} with {vp['time_limit']} s per example on {vp['processes']} process(es)")
    if key in ("table3", "table4"):
        return (f"{trained}; {ap['n_test']} test images (a seeded random sample); PGD {ap['pgd_steps']} steps x "
                f"{ap['pgd_restarts']} "
                f"restarts at L-inf {ap['linf_eps']}")
    stats = read_json(paths.tables_dir(inp) / "neighbour_stats.json")
    return f"{data['dataset']}: {stats['n_sampled']} of {stats['n_train']} training images (our training split)"


def _paper_block(key: str, comparisons: dict, params: dict, t_train: pd.DataFrame, inp: Path) -> list[str]:
    """Our numbers beside the paper's table ``key``, the two settings, and one verdict line per claim."""
    table, orders = comparisons[key]
    t = paper.TABLES[key]
    counts = table["verdict"].str.extract(r"^(reproduced|not reproduced|not testable here)")[0].value_counts()
    lines = [f"**Beside the paper ({t.title}).** Paper: {t.setting}. Ours: {_our_setting(params, t_train, key, inp)}.",
             "", table.drop(columns=["run"]).to_markdown(index=False), "",
             f"Verdicts ({paper.PAPER}; a number is reproduced within {paper.TOLERANCE_POINTS:g} points"
             + (f", a distance within {100 * paper.TOLERANCE_RELATIVE:g}%" if not t.percent else "")
             + f"; an order is reproduced when ours has the paper's order and, on per-example outcomes (both runs on "
               f"the same examples), a one-sided exact McNemar test gives p < {paper.SIGNIFICANCE:g}; beside a "
               f"percentage of n examples, ours's exact {100 * paper.CONFIDENCE:g}% interval and whether the paper's "
               "number lies inside it):",
             f"- numbers: {int(counts.get('reproduced', 0))} reproduced, {int(counts.get('not reproduced', 0))} not "
             f"reproduced, {int(counts.get('not testable here', 0))} not testable here (column `verdict`)"]
    lines += [f"- {line}" for line in orders] + [f"- note: {n}" for n in t.notes] + [""]
    return lines


def _training_notes(t_train: pd.DataFrame) -> str:
    """The training table's warnings: runs at chance level and runs whose training diverged."""
    notes = []
    chance = sorted(t_train.loc[t_train["at_chance"], "run"])
    if chance:
        notes.append("At chance level (collapsed; every attack and verification number of these runs describes "
                     f"that network): {', '.join(chance)}.")
    diverged = [f"{r.run} at epoch {r.diverged_at} of {r.epochs} (model: epoch {int(r.diverged_at) - 1})"
                for r in t_train.itertuples() if r.diverged_at != "-"]
    if diverged:
        notes.append("Diverged (the training loss turned non-finite; the run's model, and every number of it in "
                     f"this report, is that of the last finite epoch): {', '.join(diverged)}.")
    return " ".join(notes)


def _report_markdown(params: dict, out: Path, inp: Path, comparisons: dict, t_train: pd.DataFrame) -> str:
    """The one-page report; its own tables and figures are under ``out``, the ablations and laplacian
    stages' under ``inp``; each table with a counterpart in the paper is followed by the paper's
    numbers beside ours and the verdicts (``comparisons``, from ``paper_comparisons``)."""
    data, ap, vp = params["data"], params["attack"], params["verify"]

    def beside(key: str) -> list[str]:
        return _paper_block(key, comparisons, params, t_train, inp)

    t, f = paths.tables_dir(out), "figures"
    t_in, f_in = paths.tables_dir(inp), Path(os.path.relpath(paths.figures_dir(inp), out)).as_posix()
    lines = [
        "# robustlib report", "",
        f"Generated by `dvc repro` (profile `{params['base']['profile']}`): dataset `{data['dataset']}`, seed "
        f"{params['base']['seed']}. Attacks on {ap['n_test']} test examples, the same for every run: the first "
        f"of the split's seeded evaluation order, a random sample (L-inf eps {ap['linf_eps']}, L2 eps "
        f"{ap['l2_eps']}); robust means every attack of that threat model "
        f"failed on the example (worst case per example).", "",
    ]
    lines += _section("Training: clean accuracy and training time", t / "train_summary.md", out,
                      _training_notes(t_train))
    lines += [f"![learning curves]({f}/learning_curves.png)", ""]
    lines += _section("Table 1 analog: clean and robust accuracy (%) under each attack", t / "table1_attacks.md", out,
                      "linf_worst = clean AND FGSM, PGD, AutoAttack and transfer all failed. Perceptual columns "
                      "follow Laidlaw et al. 2021 (perceptual-advex): spatial = StAdv, recolor = ReColorAdv (CIELUV), "
                      "JPEG = JPEG-L-inf, NPTM = worst of LPA and PPGD (those run) under ONE fixed LPIPS network, "
                      f"{_lpips_note(inp)}; each keeps its best iterate per example (the reference returns the last), "
                      "and every point is checked to lie in its threat model's set. n/a: the attack needs colour "
                      "images. PGD_nonmonotone: PGD alone lost strength at a larger eps (robust accuracy rose with "
                      "eps, "
                      "a sign of gradient masking); the curves show PGD's worst case over the nested balls. "
                      "PGD_unconverged: doubling PGD's steps or restarts moved its robust accuracy by more than "
                      f"{100 * float(ap['sanity']['budget_tol']):g} points on {ap['sanity']['n']} examples, "
                      "but every example it then broke is broken in linf_worst (the stage fails otherwise). "
                      "PGD_below_FGSM: PGD broke fewer examples than FGSM at some eps (curves or the standard eps), "
                      "another sign of gradient masking; linf_worst takes FGSM per example. "
                      f"AutoAttack's Square ran {int(ap['square_queries'])} queries"
                      + ("" if int(ap["square_queries"]) == 5000 else
                         " (AutoAttack standard: 5000; a weaker evaluation than the published one)")
                      + ". AA_square_flag: "
                      "threat models where "
                      "AutoAttack's gradient-free Square broke examples APGD and FAB missed; survivors were "
                      f"re-attacked by Square with {ap['square_escalation']}x queries and restarts "
                      "(0: not re-attacked, AutoAttack standard as published). AA_escape_hits: per threat model, "
                      "examples that survived every AutoAttack component with an exactly zero input gradient "
                      "(invisible to gradient attacks, a flat loss for Square), no sound bound proving them "
                      "robust, and broken by our escape attack (an adaptive attack after Tramer et al. 2020: "
                      "switch dead ReLU units on, then PGD; counted broken in the AA column, a departure from "
                      "AutoAttack as published). AA_unresolved: per threat model, the number of examples counted "
                      "robust although nothing decided them: blind as above and no escape found a point with a "
                      "gradient; the AA figure may overstate by at most that many (the stage fails above 1% of "
                      "the examples).")
    lines += beside("table1")
    lines += _section("Perceptual attacks: budgets and positive controls", t / "perceptual_settings.md", out,
                      "Budgets as Laidlaw et al. 2021 use them on CIFAR-10 (they give none for MNIST); the "
                      "undefended run's accuracy under each attack must not exceed control_max (the attack stage "
                      "fails otherwise).")
    lines += [f"![robustness curves]({f}/robustness_curves.png)", ""]
    lines += _section("Table 2 analog: complete verification (MILP)", t / "table2_verification.md", out,
                      f"First {vp['n_test']} test examples; all columns on the same examples and at the same eps "
                      f"(AutoAttack standard at each eps). Solver {vp['solver']}, time limit {vp['time_limit']} s "
                      f"per example, {vp['processes']} process(es). Verified means the proven minimum margin "
                      f"exceeds atol {vp['margin_atol']:g} + rtol {vp['margin_rtol']:g} x (bound on the largest "
                      "logit over the ball)" + (" + 2 x a rigorous float32 error bound" if vp.get("margin_float32")
                                                else "") + "; a timeout, solver error or margin within that "
                      "tolerance is never counted as verified. pgd_minus_verified is split into gap_timeout "
                      "(time limit), gap_unknown_other (e.g. margin within the tolerance) and gap_falsified "
                      "(a counterexample PGD missed).")
    lines += beside("table2")
    lines += [f"![verification]({f}/verification.png)", ""]
    lines += _section("Certified accuracy (IBP; Lipschitz for spectral-norm runs)", t / "certified.md", out)
    lines += _section("Table 3 analog: ablations", t_in / "ablation_table3.md", inp)
    lines += beside("table3")
    lines += _section("Regularization-strength sweep", t_in / "ablation_sweep.md", inp)
    lines += [f"![sweep]({f_in}/ablation_sweep.png)", ""]
    lines += sweep_sections(inp, f_in, Path(os.path.relpath(t_in, out)).as_posix())  # weight sweeps (metrics/sweep/)
    lines += _section("Table 4 analog: sparse vs dense Laplacian regularizer", t_in / "laplacian_table4.md", inp)
    lines += beside("table4")
    stats = t_in / "neighbour_stats.json"
    if stats.exists():
        s = json.loads(stats.read_text())
        lines += ["Appendix B: nearest-neighbour L2 distances of a random "
                  f"{s['n_sampled']} of {s['n_train']} training points: mean {s['mean']:.3f}, median "
                  f"{s['median']:.3f}, 10th percentile {s['p10']:.3f}; {100 * s['fraction_closer_than_2r']:.2f}% "
                  f"are closer than twice the ball's L2 radius ({s['ball_radius_l2']:.3f}).", "",
                  f"![neighbour distances]({f_in}/neighbour_distances.png)", ""]
        lines += beside("appendix_b")
    lines += _section("Cost per training step (benchmark)", t / "benchmark_objectives.md", out,
                      "Measured by `python benchmarks/bench_objectives.py` (not by the pipeline).")
    return "\n".join(lines)
