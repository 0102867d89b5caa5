"""Figures (functions return a Figure, never save) and tables for the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from robustlib.data.datasets import dataset_info
from robustlib.evaluation import schema
from robustlib.pipeline.io import atomic_write

CHANCE_MARGIN = 0.02
"""A run whose clean accuracy is within this of 1 / classes is flagged ``at_chance`` (a collapsed network)."""


def training_table(metrics: Sequence[Mapping]) -> pd.DataFrame:
    """One row per run: clean accuracy (%) and training minutes, from the train stage's metrics;
    ``at_chance``: clean accuracy within ``CHANCE_MARGIN`` of guessing (the network collapsed, e.g. to a
    constant: what the attack and verification tables say of it is about that network); ``diverged_at``:
    the epoch whose loss turned non-finite (the run's model is the previous epoch's), else ``-``."""
    rows = [{
        "run": m["run"],
        "model": m["model"],
        "objective": " + ".join(m["objective"]),
        "epochs": m["epochs"],
        "n_train": m["n_train"],
        "clean_acc_%": round(100 * m["clean_acc"], 2),
        "n_test": m["n_test"],
        "train_minutes": round(m["train_minutes"], 2),
        "at_chance": bool(m["clean_acc"] <= 1 / dataset_info(m["dataset"]).num_classes + CHANCE_MARGIN),
        "diverged_at": diverged_epoch(m) or "-",
    } for m in metrics]
    return pd.DataFrame(rows).sort_values("run").reset_index(drop=True)


def diverged_epoch(train_metrics: Mapping) -> int | None:
    """The epoch at which a run's training loss turned non-finite (train stage metrics), or None."""
    d = train_metrics.get("diverged")
    return int(d["epoch"]) if d else None


def describe_objective(objective: Mapping[str, object]) -> str:
    """A run's objective (``runs.<run>.objective`` of params) in words: each term's weight and its other
    settings, e.g. ``ce 1 + hamming 9000 (alpha 8) + stability 0.4 (reduction sum)``."""
    parts = []
    for name, spec in objective.items():
        if isinstance(spec, Mapping):
            extra = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k} {v}"
                              for k, v in spec.items() if k != "weight")
            parts.append(f"{name} {float(spec.get('weight', 1.0)):g}" + (f" ({extra})" if extra else ""))
        else:
            parts.append(f"{name} {float(spec):g}")
    return " + ".join(parts)


FAMILIES = (("the paper's method and ablations", frozenset({"hamming", "stability", "dense_laplacian"})),
            ("adversarial training", frozenset({"pgd_at", "fgsm", "fgsm_at", "trades"})))
OTHER_FAMILY = "the survey's regularizers"


def run_family(terms) -> str:
    """The group a run is plotted in, from its objective's terms: the paper's method and its ablations
    (any Hamming/stability/dense term, e.g. also Hamming+stability then PGD), adversarial training
    (PGD, FGSM, TRADES; RS loss, which is PGD-AT + RS), or the survey's other regularizers."""
    for name, members in FAMILIES:
        if members & set(terms):
            return name
    return OTHER_FAMILY


def _grouped(runs: Mapping[str, object], families: Mapping[str, str], reference: str | None
             ) -> list[tuple[str, list[str]]]:
    """(family, runs) for each family that has runs, in FAMILIES order; ``reference`` (the undefended
    run) is drawn in every panel and belongs to none."""
    order = [name for name, _ in FAMILIES] + [OTHER_FAMILY]
    groups = {f: [r for r in runs if r != reference and families.get(r, OTHER_FAMILY) == f] for f in order}
    return [(f, rs) for f, rs in groups.items() if rs] or [(OTHER_FAMILY, [r for r in runs if r != reference])]


def learning_curves_figure(curves: Mapping[str, pd.DataFrame], metrics: Sequence[str],
                           families: Mapping[str, str] | None = None, reference: str | None = None) -> Figure:
    """One column per metric (e.g. training loss, validation accuracy) against epoch; one row per run
    family (``run_family``), one line per run, the undefended ``reference`` run dashed in every row."""
    tidy = pd.concat([df.assign(run=run) for run, df in curves.items()], ignore_index=True)
    missing = [m for m in metrics if m not in tidy.columns]
    if missing:
        raise ValueError(f"learning curves lack metrics {missing}; available: {sorted(tidy.columns)}")
    groups = _grouped(curves, families or {}, reference)
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(4.8 * len(metrics), 3.2 * len(groups)),
                             squeeze=False)
    for row, (family, runs) in zip(axes, groups, strict=True):
        for ax, metric in zip(row, metrics, strict=True):
            sns.lineplot(data=tidy[tidy["run"].isin(runs)], x="epoch", y=metric, hue="run", ax=ax,
                         legend=ax is row[-1])
            if reference in curves:
                ref = curves[reference]
                ax.plot(ref["epoch"], ref[metric], color="k", ls="--", lw=1, label=f"{reference} (reference)")
            ax.set_title(f"{metric.replace('_', ' ')}: {family}", fontsize=9)
            ax.grid(alpha=0.3)
        if row[-1].get_legend():
            row[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7)
    fig.tight_layout()
    return fig


def write_table(df: pd.DataFrame, stem: str | Path) -> tuple[Path, Path]:
    """Write ``df`` as ``<stem>.csv`` and ``<stem>.md`` (atomically); return both paths."""
    stem = Path(stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic_write(csv, lambda p: df.to_csv(p, index=False))
    atomic_write(md, lambda p: p.write_text(df.to_markdown(index=False) + "\n"))
    return csv, md


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save a figure as PNG with fixed metadata (so reruns produce identical bytes) and close it."""
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120, metadata={"Software": None}))
    plt.close(fig)
    return path


def sweep_figure(sweep: pd.DataFrame) -> Figure:
    """Regularization-strength sweep: clean vs robust accuracy (one point per (gamma_H, gamma_S)),
    and training minutes per setting."""
    robust = "aa_linf_%" if "aa_linf_%" in sweep else "worst_linf_%"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.scatterplot(data=sweep, x="clean_%", y=robust, hue="gamma_H", size="gamma_S", palette="viridis",
                    sizes=(40, 160), ax=ax1)
    for _, r in sweep.iterrows():
        ax1.annotate(f"H{r['gamma_H']:g}/S{r['gamma_S']:g}", (r["clean_%"], r[robust]), fontsize=7,
                     xytext=(3, 3), textcoords="offset points")
    ax1.set_xlabel("clean accuracy (%)")
    ax1.set_ylabel(f"robust accuracy (%), {robust.removesuffix('_%')}")
    labels = [f"H{h:g}/S{s:g}" for h, s in zip(sweep["gamma_H"], sweep["gamma_S"], strict=True)]
    ax2.bar(labels, sweep["train_minutes"], color="tab:gray")
    ax2.set_ylabel("training minutes")
    ax2.tick_params(axis="x", rotation=45)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def neighbour_histogram(distances, stats) -> Figure:
    """Histogram of nearest-other-training-point L2 distances, with twice the ball's L2 radius marked."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(distances.double().numpy(), bins=60, color="tab:blue", alpha=0.8)
    two_r = 2 * stats.ball_radius_l2
    ax.axvline(two_r, color="tab:red", ls="--", label=f"2 x ball radius = {two_r:.2f} "
               f"({100 * stats.fraction_closer_than_2r:.1f}% closer)")
    ax.axvline(stats.median, color="k", ls=":", label=f"median {stats.median:.2f}")
    ax.set_xlabel("L2 distance to the nearest other training point")
    ax.set_ylabel("sampled training points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def robustness_curves_figure(curves: Mapping[str, pd.DataFrame], families: Mapping[str, str] | None = None,
                             reference: str | None = None) -> Figure:
    """Robust accuracy vs eps (paper Figure 2): one column per norm, one row per run family
    (``run_family``), one line per run (PGD's worst case over nested balls), AutoAttack points as
    crosses; the undefended ``reference`` run dashed in every row."""
    tidy = pd.concat([df.assign(run=run) for run, df in curves.items()], ignore_index=True)
    norms = [n for n in ("linf", "l2") if n in set(tidy["norm"])]
    groups = _grouped(curves, families or {}, reference)
    fig, axes = plt.subplots(len(groups), len(norms), figsize=(5.5 * len(norms), 3.4 * len(groups)), squeeze=False)
    for row, (family, runs) in zip(axes, groups, strict=True):
        palette = dict(zip(runs, sns.color_palette("tab10", len(runs)), strict=True))
        if reference in curves:
            palette[reference] = (0.0, 0.0, 0.0)
        for ax, norm in zip(row, norms, strict=True):
            d = tidy[(tidy["norm"] == norm) & tidy["run"].isin([*runs, reference])]
            line = "pgd_nested" if "pgd_nested" in set(d["attack"]) else "pgd"  # PGD worst case over nested balls
            sns.lineplot(data=d[d["attack"] == line], x="eps", y="robust_acc", hue="run", palette=palette,
                         style="run", dashes={r: (4, 2) if r == reference else "" for r in palette}, marker="o",
                         ax=ax, legend=ax is row[-1])
            aa = d[d["attack"] == "autoattack"]
            ax.scatter(aa["eps"], aa["robust_acc"], c=[palette[r] for r in aa["run"]], marker="x", s=70, zorder=5)
            ax.set_title(f"{'L-inf' if norm == 'linf' else 'L2'}: {family}", fontsize=9)
            ax.set_ylabel("robust accuracy")
            ax.grid(alpha=0.3)
        if row[-1].get_legend():
            sns.move_legend(row[-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title="PGD (x: AutoAttack)")
    fig.tight_layout()
    return fig


def verification_figure(per_example: Mapping[str, pd.DataFrame]) -> Figure:
    """Verification time and unstable-ReLU counts per run (one box per run and eps)."""
    tidy = pd.concat([df.assign(run=run) for run, df in per_example.items() if len(df)], ignore_index=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.boxplot(data=tidy, x="run", y="seconds", hue="eps", ax=ax1)
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds per example")
    sns.boxplot(data=tidy, x="run", y="unstable", hue="eps", ax=ax2)
    ax2.set_ylabel("unstable ReLUs per example")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run_summary(out, run: str) -> dict:
    """Clean and robust accuracy (%) of a run from its per-example attack results, with training minutes."""
    from robustlib.pipeline import paths
    from robustlib.pipeline.io import read_json

    table = schema.load_results(paths.attack_results_path(out, run))
    train = read_json(paths.train_metrics_path(out, run))
    row = {"run": run, "n": len(table), "clean_%": 100 * table[schema.CLEAN].mean()}
    for col, name in ((schema.robust("pgd_linf"), "pgd_linf_%"), (schema.robust("aa_linf"), "aa_linf_%"),
                      (schema.worst("linf"), "worst_linf_%"), (schema.robust("aa_l2"), "aa_l2_%")):
        if col in table:
            row[name] = 100 * table[col].mean()
    row["train_minutes"] = train["train_minutes"]
    return row


PERCEPTUAL_COLUMNS = (("spatial", "stadv", ("stadv",)), ("recolor", "recoloradv", ("recoloradv",)),
                      ("JPEG", "jpeg", ("jpeg",)), ("NPTM", "nptm", ("lpa", "ppgd")))
"""Table 1's perceptual columns: (column, threat model, its attacks) -- Laidlaw et al. 2021's threat models."""

ATTACK_OUTCOME_COLUMNS = {"clean_%": schema.CLEAN, "pgd_linf_%": schema.robust("pgd_linf"),
                          "aa_linf_%": schema.robust("aa_linf"), "linf_AA": schema.robust("aa_linf"),
                          "worst_linf_%": schema.worst("linf"), "linf_worst": schema.worst("linf"),
                          "aa_l2_%": schema.robust("aa_l2"), "l2_AA": schema.robust("aa_l2"),
                          **{col: schema.worst(threat) for col, threat, _ in PERCEPTUAL_COLUMNS}}
"""The per-example attack-results column each report column (``run_summary``, ``attack_table``) averages."""


def per_example_outcomes(out, run: str, metric: str, eps: float) -> pd.Series | None:
    """The per-example outcomes (booleans indexed by test index) behind report column ``metric`` of
    ``run``: the attack stage's (``ATTACK_OUTCOME_COLUMNS``) or, for ``verified``, the verify stage's
    verdicts at ``eps``; None for any other column (e.g. minutes) or where the run has no such results."""
    from robustlib.pipeline import paths

    if metric == "verified":
        f = paths.verify_results_path(out, run)
        if not f.exists():
            return None
        table = pd.read_csv(f)
        at = table[(table["eps"] - eps).abs() < 1e-9]
        return None if at.empty else (at["verdict"] == "verified").set_axis(at[schema.INDEX])
    column, f = ATTACK_OUTCOME_COLUMNS.get(metric), paths.attack_results_path(out, run)
    if column is None or not f.exists():
        return None
    table = schema.load_results(f)
    return table[column].astype(bool).set_axis(table[schema.INDEX]) if column in table else None


def perceptual_settings(attack: Sequence[Mapping], undefended_run: str | None) -> pd.DataFrame:
    """Each perceptual attack's budget and the undefended run's accuracy under it (the positive
    controls), from the attack stage's metrics."""
    by_run = {m["run"]: m for m in attack}
    base = by_run.get(undefended_run, {})
    budgets = next((m["perceptual_budgets"] for m in attack if m.get("perceptual_budgets")), {})
    controls = base.get("sanity", {}).get("perceptual_controls", {})
    rows = []
    for name, eps in budgets.items():
        acc = base.get(schema.acc_key(name))
        rows.append({"attack": name, "budget": eps,
                     f"{undefended_run}_acc_%": "n/a" if name in base.get("not_applicable", {}) else
                     (round(100 * acc, 2) if acc is not None else "-"),
                     "control_max_%": round(100 * controls[name]["max_acc"], 2)
                     if "max_acc" in controls.get(name, {}) else "-"})
    return pd.DataFrame(rows)


def attack_table(train: Sequence[Mapping], attack: Sequence[Mapping]) -> pd.DataFrame:
    """Paper Table 1 analog: clean / L-inf AA / L2 AA / spatial / recolor / JPEG / NPTM (%) / training
    minutes per run; each perceptual column is the per-example worst case over that threat model's
    attacks (NPTM: LPA and PPGD); an attack that does not apply to the dataset shows ``n/a``. ``AA_square_flag``
    names the threat models where AutoAttack's Square (gradient-free) broke examples that APGD and
    FAB did not (a sign of gradient masking); ``AA_escape_hits`` counts, per threat model, the examples
    AutoAttack left unbroken with a zero input gradient that the escape attack broke, and
    ``AA_unresolved`` the unbroken examples with a zero input gradient that no bound proves robust and
    no escape reached (``robustlib.attacks.autoattack``)."""
    minutes = {m["run"]: m["train_minutes"] for m in train}
    rows = []
    for m in attack:
        row = {"run": m["run"], "clean": 100 * m["clean_acc"], "linf_AA": 100 * m[schema.acc_key("aa_linf")],
               "linf_worst": 100 * m[schema.worst_acc_key("linf")], "l2_AA": 100 * m[schema.acc_key("aa_l2")]}
        for col, threat, attacks in PERCEPTUAL_COLUMNS:  # worst case over the threat model's attacks
            if schema.worst_acc_key(threat) in m:
                row[col] = round(100 * m[schema.worst_acc_key(threat)], 2)
            else:
                row[col] = "n/a" if any(a in m.get("not_applicable", {}) for a in attacks) else "-"
        row["train_minutes"] = minutes.get(m["run"])
        aa = m.get("autoattack", {})
        row["AA_square_flag"] = ",".join(n for n in ("linf", "l2") if aa.get(n, {}).get("square_stronger")) or "-"
        for col, key in (("AA_escape_hits", "blind_escape_hits"), ("AA_unresolved", "unresolved")):
            row[col] = ",".join(f"{n}:{aa[n][key]}" for n in ("linf", "l2") if aa.get(n, {}).get(key)) or "-"
        row["PGD_nonmonotone"] = "yes" if m.get("sanity", {}).get("pgd_nonmonotone") else "-"
        row["PGD_unconverged"] = "yes" if m.get("sanity", {}).get("budget_linf", {}).get("unconverged") else "-"
        row["PGD_below_FGSM"] = "yes" if m.get("sanity", {}).get("pgd_weaker_than_fgsm") else "-"
        rows.append(row)
    return pd.DataFrame(rows).round(2).sort_values("run").reset_index(drop=True)


def verification_table(verify: Sequence[Mapping], attack: Mapping[str, Mapping]) -> pd.DataFrame:
    """Paper Table 2 analog: per MILP-verified run and eps, on the same examples, clean / PGD-robust /
    AutoAttack-robust / verified accuracy (%), the gap PGD - verified split into its causes (examples
    that timed out, stayed unknown otherwise -- e.g. a margin within the numerical tolerance --, or were
    falsified by a counterexample PGD missed), median and p90 seconds per example, timeouts, unstable
    ReLUs and the solver (the paper's numbers: ``robustlib.reporting.paper.TABLE2``, beside ours in the report)."""
    rows = []
    for m in verify:
        for eps, e in m["eps"].items():
            if "verified" not in e:
                continue
            a = attack.get(m["run"], {})
            same_eps = a and abs(float(eps) - a["linf_eps"]) < 1e-12
            aa = e.get("aa_acc", a["aa_linf_acc"] if same_eps else None)
            gap = e.get("gap", {})
            rows.append({"run": m["run"], "eps": float(eps), "n": e["n"], "clean": 100 * m["clean_acc"],
                         "pgd": 100 * e["pgd_acc"], "autoattack": None if aa is None else 100 * aa,
                         "verified": 100 * e["verified_fraction"], "ibp_certified": 100 * e["ibp_certified_acc"],
                         "pgd_minus_verified": 100 * (e["pgd_acc"] - e["verified_fraction"]),
                         "gap_timeout": gap.get("timeout"), "gap_unknown_other": gap.get("unknown_other"),
                         "gap_falsified": gap.get("falsified"), "unknown": e["unknown"], "timeouts": e["timeouts"],
                         "median_s": e["median_seconds"], "p90_s": e["p90_seconds"],
                         "unstable_median": e["unstable_median"],
                         "solver": m.get("solver", {}).get("solver", "highs")})
    df = pd.DataFrame(rows)  # eps exact: the report matches it to the paper's 8/255 (0.031 would not)
    return df.round({c: 3 for c in df.columns if c != "eps"})
