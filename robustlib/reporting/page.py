"""The one-page report (``reports/<profile>/report.md``): its sections in order, each table followed by
the paper's numbers beside ours and the verdicts (``robustlib.reporting.paper``), and the notes that say
how each number was measured. Tables and figures are written by the report, ablations and laplacian
stages; this module writes the words around them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from robustlib.evaluation import schema
from robustlib.pipeline import paths
from robustlib.pipeline.io import read_json
from robustlib.reporting import gallery, paper, selected
from robustlib.reporting.sweep import sweep_sections
from robustlib.reporting.tables import describe_objective, per_example_outcomes

PAPER_FIGURES = {
    "table1": ("table1_attacks.png", [schema.TABLE_CLEAN, schema.LINF_AA, schema.LINF_WORST, schema.L2_AA,
                                      schema.SPATIAL, schema.RECOLOR, schema.JPEG_COLUMN, schema.NPTM_COLUMN,
                                      schema.TRAIN_MINUTES]),
    "table3": ("table3_ablations.png", [schema.CLEAN_PCT, schema.PGD_LINF_PCT, schema.WORST_LINF_PCT]),
    "table4": ("table4_laplacian.png", [schema.CLEAN_PCT, schema.PGD_LINF_PCT, schema.WORST_LINF_PCT]),
}
"""The report stage's figure of each paper table but Table 2: its file under ``figures/`` and our columns it
draws (``robustlib.reporting.paper_figures.beside_paper_figure``)."""
VERIFICATION_FIGURE = "verification.png"
"""Table 2's figure (``robustlib.reporting.paper_figures.verification_figure``)."""


def paper_comparisons(params: dict, train: list[dict], t1: pd.DataFrame, t2: pd.DataFrame, inp: Path
                      ) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Our numbers beside each of the paper's tables (``robustlib.reporting.paper.compare``): Table 1 from our
    Table 1 analogue, Table 2 from the verification rows at 8/255 (with the weight sweep's selected setting as
    the median of its seeds, ``robustlib.reporting.selected``), Tables 3-4 from the ablations and laplacian
    stages' tables, Appendix B from the neighbour statistics."""
    dataset = params["data"]["dataset"]
    models = {m["run"]: m["model"] for m in train}
    tables = paths.tables_dir(inp)
    at_8 = t2[(t2[schema.EPS] - paper.PAPER_EPS).abs() < 1e-6] if len(t2) else t2
    stats = read_json(tables / "neighbour_stats.json")
    run = schema.RUN
    ours = {"table1": t1.set_index(run), "table2": at_8.set_index(run) if len(at_8) else pd.DataFrame(),
            "table3": pd.read_csv(tables / "ablation_table3.csv").set_index(run),
            "table4": pd.read_csv(tables / "laplacian_table4.csv").set_index(run),
            "appendix_b": pd.DataFrame([{k: stats[k] for k in (schema.NN_MEAN, schema.NN_MEDIAN, schema.NN_P10)}],
                                       index=["data"])}

    def outcomes(run: str, metric: str) -> pd.Series | None:
        return per_example_outcomes(inp, run, metric, paper.PAPER_EPS)

    seeded = selected.seeded_setting(inp)
    median = None if seeded is None else selected.median_row(ours["table2"], seeded.runs)
    if median is not None:
        ours["table2"] = pd.concat([ours["table2"], median.to_frame(paper.SELECTED_RUN).T])
        models[paper.SELECTED_RUN] = models[seeded.runs[0]]
    out = {key: paper.compare(paper.TABLES[key], ours[key], models, dataset, outcomes) for key in paper.TABLES}
    out["table2"][1].extend(selected.not_selected_lines() if seeded is None else selected.selected_lines(
        params, ours["table2"], seeded, {m["run"]: m for m in train}, outcomes))
    return out


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
    runs = [r for r in paper.TABLES[key].rows if r in set(t_train[schema.RUN])]
    tr = t_train.set_index(schema.RUN).loc[runs] if runs else t_train.iloc[:0]

    def joined(column: str) -> str:
        return "/".join(str(v) for v in sorted(set(tr[column])))

    trained = (f"{joined(schema.MODEL)}, {data['dataset']}, {joined(schema.EPOCHS)} epoch(s) on "
               f"{joined(schema.N_TRAIN)} training "
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
    counts = table[schema.VERDICT].str.extract(r"^(reproduced|not reproduced|not testable here)")[0].value_counts()
    lines = [f"**Beside the paper ({t.title}).** Paper: {t.setting}. Ours: {_our_setting(params, t_train, key, inp)}.",
             "", table.drop(columns=[schema.RUN]).to_markdown(index=False), "",
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


def training_notes(t_train: pd.DataFrame) -> str:
    """The training table's warnings: runs at chance level and runs whose training diverged."""
    notes = []
    chance = sorted(t_train.loc[t_train[schema.AT_CHANCE], schema.RUN])
    if chance:
        notes.append("At chance level (collapsed; every attack and verification number of these runs describes "
                     f"that network): {', '.join(chance)}.")
    diverged = [f"{run} at epoch {at} of {epochs} (model: epoch {int(at) - 1})" for run, at, epochs
                in zip(t_train[schema.RUN], t_train[schema.DIVERGED_AT], t_train[schema.EPOCHS], strict=True)
                if at != schema.NOT_DIVERGED]
    if diverged:
        notes.append("Diverged (the training loss turned non-finite; the run's model, and every number of it in "
                     f"this report, is that of the last finite epoch): {', '.join(diverged)}.")
    return " ".join(notes)


def report_markdown(params: dict, out: Path, inp: Path, comparisons: dict, t_train: pd.DataFrame) -> str:
    """The one-page report; its own tables and figures are under ``out``, the ablations and laplacian
    stages' under ``inp``; each table with a counterpart in the paper is followed by the paper's
    numbers beside ours and the verdicts (``comparisons``, from ``paper_comparisons``)."""
    data, ap = params["data"], params["attack"]

    def beside(key: str) -> list[str]:  # the figure of ours beside the paper's numbers, then the numbers
        name = PAPER_FIGURES[key][0] if key in PAPER_FIGURES else VERIFICATION_FIGURE if key == "table2" else None
        figure = [f"![{paper.TABLES[key].title}: ours beside the paper](figures/{name})", ""] if name else []
        return figure + _paper_block(key, comparisons, params, t_train, inp)

    t, f = paths.tables_dir(out), "figures"
    lines = [
        "# robustlib report", "",
        f"Generated by `dvc repro` (profile `{params['base']['profile']}`): dataset `{data['dataset']}`, seed "
        f"{params['base']['seed']}. Attacks on {ap['n_test']} test examples, the same for every run: the first "
        f"of the split's seeded evaluation order, a random sample (L-inf eps {ap['linf_eps']}, L2 eps "
        f"{ap['l2_eps']}); robust means every attack of that threat model "
        f"failed on the example (worst case per example).", "",
    ]
    lines += _section("Training: clean accuracy and training time", t / "train_summary.md", out,
                      training_notes(t_train))
    lines += [f"![learning curves]({f}/learning_curves.png)", ""]
    lines += _section("Table 1 analog: clean and robust accuracy (%) under each attack", t / "table1_attacks.md", out,
                      _table1_note(ap, inp))
    lines += beside("table1")
    lines += _section("Perceptual attacks: budgets and positive controls", t / "perceptual_settings.md", out,
                      "Budgets as Laidlaw et al. 2021 use them on CIFAR-10 (they give none for MNIST); the "
                      "undefended run's accuracy under each attack must not exceed control_max (the attack stage "
                      "fails otherwise).")
    lines += [f"![robustness curves]({f}/robustness_curves.png)", ""]
    lines += gallery_section(out, inp, ap)
    lines += _section("Table 2 analog: complete verification (MILP)", t / "table2_verification.md", out,
                      _table2_note(params["verify"]))
    lines += beside("table2")
    lines += _section("Certified accuracy (IBP; Lipschitz for spectral-norm runs)", t / "certified.md", out)
    lines += _cross_run_sections(out, inp, beside)
    lines += _section("Cost per training step (benchmark)", t / "benchmark_objectives.md", out,
                      "Measured by `python benchmarks/bench_objectives.py` (not by the pipeline).")
    return "\n".join(lines)


def _cross_run_sections(out: Path, inp: Path, beside) -> list[str]:
    """The ablations' and laplacian stages' tables and figures (under ``inp``), each beside the paper's."""
    t_in, f_in = paths.tables_dir(inp), Path(os.path.relpath(paths.figures_dir(inp), out)).as_posix()
    lines = _section("Table 3 analog: ablations", t_in / "ablation_table3.md", inp)
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
    return lines


def gallery_section(out: Path, inp: Path, ap: dict) -> list[str]:
    """The adversarial-example gallery (the gallery stage's figure and table under ``inp``): how it was made,
    per run and attack how many of its images are still classified correctly, and on how many (image, attack)
    pairs the attack stage's per-example results (its n_test examples at once) give the same outcome."""
    table = schema.load_gallery(paths.gallery_table_path(inp))
    runs = list(dict.fromkeys(table[schema.RUN]))
    n = table.groupby(schema.RUN)[schema.INDEX].nunique().max()
    results = {r: schema.load_results(paths.attack_results_path(inp, r)) for r in runs
               if paths.attack_results_path(inp, r).exists()}
    agree, compared = gallery.attack_stage_agreement(table, results)
    names = ", ".join(gallery.TITLES[a] for a in dict.fromkeys(table[schema.ATTACK]) if a in gallery.TITLES)
    figure = Path(os.path.relpath(paths.gallery_figure_path(inp), out)).as_posix()
    table_file = Path(os.path.relpath(paths.gallery_table_path(inp), out)).as_posix()
    return ["## Adversarial examples", "", f"![adversarial examples]({figure})", "",
            f"The first {n} test images of the attack stage's evaluation order for {', '.join(runs)}: clean and "
            f"under each attack of Table 1 that this profile runs ({names}), built by the attack stage's suite "
            "from the same params, seed and LPIPS network (the gallery stage), run on these images alone. Above "
            "each image its prediction (green tick: the label; red cross: wrong); beside it the perturbation "
            "x_adv - x, drawn as 0.5 + factor x (x_adv - x) (grey: no change) with the factor of that attack "
            "above it. An image the model already misclassifies is not attacked (every attack returns it "
            "unchanged). n/a: the attack does not apply (ReColorAdv needs colour images).", "",
            "Images still classified correctly:", "", gallery.counts(table).to_markdown(index=False), "",
            f"The attack stage, which ran the same attacks on all {ap['n_test']} examples at once (other random "
            f"starts), gives the same outcome on {agree} of the {compared} (image, attack) pairs it shares with "
            f"the gallery. Source: `{table_file}`.", ""]


def _table1_note(ap: dict, inp: Path) -> str:
    """How Table 1's columns were measured (the attack params ``ap``; the LPIPS network under ``inp``)."""
    return ("linf_worst = clean AND FGSM, PGD, AutoAttack and transfer all failed. Perceptual columns "
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


def _table2_note(vp: dict) -> str:
    """How Table 2's columns were measured (the verify params ``vp``)."""
    return (f"First {vp['n_test']} test examples; all columns on the same examples and at the same eps "
            f"(AutoAttack standard at each eps). Solver {vp['solver']}, time limit {vp['time_limit']} s "
            f"per example, {vp['processes']} process(es). Verified means the proven minimum margin "
            f"exceeds atol {vp['margin_atol']:g} + rtol {vp['margin_rtol']:g} x (bound on the largest "
            "logit over the ball)" + (" + 2 x a rigorous float32 error bound" if vp.get("margin_float32")
                                      else "") + "; a timeout, solver error or margin within that "
            "tolerance is never counted as verified. pgd_minus_verified is split into gap_timeout "
            "(time limit), gap_unknown_other (e.g. margin within the tolerance) and gap_falsified "
            "(a counterexample PGD missed).")
