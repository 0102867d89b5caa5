"""The report's figures of the results (robustness curves, the ablations' sweep, verification, the
training data's neighbour distances): each function returns a Figure (never saves it;
``robustlib.reporting.plots.save_figure`` does), multi-run figures grouped by run family."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from robustlib.evaluation import schema
from robustlib.evaluation.suite import CURVE_AUTOATTACK, CURVE_PGD, CURVE_PGD_NESTED, LINF
from robustlib.reporting.plots import RUN, grouped, stack
from robustlib.threat import NORMS


def sweep_figure(sweep: pd.DataFrame) -> Figure:
    """Regularization-strength sweep: clean vs robust accuracy (one point per (gamma_H, gamma_S)),
    and training minutes per setting."""
    robust = schema.AA_LINF_PCT if schema.AA_LINF_PCT in sweep else schema.WORST_LINF_PCT
    h, s, clean = schema.GAMMA_H, schema.GAMMA_S, schema.CLEAN_PCT
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.scatterplot(data=sweep, x=clean, y=robust, hue=h, size=s, palette="viridis", sizes=(40, 160), ax=ax1)
    for _, r in sweep.iterrows():
        ax1.annotate(f"H{r[h]:g}/S{r[s]:g}", (r[clean], r[robust]), fontsize=7, xytext=(3, 3),
                     textcoords="offset points")
    ax1.set_xlabel("clean accuracy (%)")
    ax1.set_ylabel(f"robust accuracy (%), {schema.quantity(robust)}")
    labels = [f"H{gh:g}/S{gs:g}" for gh, gs in zip(sweep[h], sweep[s], strict=True)]
    ax2.bar(labels, sweep[schema.TRAIN_MINUTES], color="tab:gray")
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
    tidy = stack(curves)
    run, eps, acc, attack = RUN, schema.EPS, schema.ROBUST_ACC, schema.ATTACK
    norms = [n for n in NORMS if n in set(tidy[schema.NORM])]
    groups = grouped(curves, families or {}, reference)
    fig, axes = plt.subplots(len(groups), len(norms), figsize=(5.5 * len(norms), 3.4 * len(groups)), squeeze=False)
    for row, (family, runs) in zip(axes, groups, strict=True):
        palette = dict(zip(runs, sns.color_palette("tab10", len(runs)), strict=True))
        if reference in curves:
            palette[reference] = (0.0, 0.0, 0.0)
        for ax, norm in zip(row, norms, strict=True):
            d = tidy[(tidy[schema.NORM] == norm) & tidy[run].isin([*runs, reference])]
            line = CURVE_PGD_NESTED if CURVE_PGD_NESTED in set(d[attack]) else CURVE_PGD  # PGD's nested worst case
            sns.lineplot(data=d[d[attack] == line], x=eps, y=acc, hue=run, palette=palette,
                         style=run, dashes={r: (4, 2) if r == reference else "" for r in palette}, marker="o",
                         ax=ax, legend=ax is row[-1])
            aa = d[d[attack] == CURVE_AUTOATTACK]
            ax.scatter(aa[eps], aa[acc], c=[palette[r] for r in aa[run]], marker="x", s=70, zorder=5)
            ax.set_title(f"{'L-inf' if norm == LINF else 'L2'}: {family}", fontsize=9)
            ax.set_ylabel("robust accuracy")
            ax.grid(alpha=0.3)
        if row[-1].get_legend():
            sns.move_legend(row[-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title="PGD (x: AutoAttack)")
    fig.tight_layout()
    return fig


def verification_figure(per_example: Mapping[str, pd.DataFrame]) -> Figure:
    """Verification time and unstable-ReLU counts per run (one box per run and eps)."""
    tidy = stack({run: df for run, df in per_example.items() if len(df)})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.boxplot(data=tidy, x=RUN, y=schema.VERIFY_SECONDS, hue=schema.EPS, ax=ax1)
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds per example")
    sns.boxplot(data=tidy, x=RUN, y=schema.VERIFY_UNSTABLE, hue=schema.EPS, ax=ax2)
    ax2.set_ylabel("unstable ReLUs per example")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
