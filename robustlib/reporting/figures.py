"""The ablations' and laplacian stages' figures (the regularization-strength sweep, the training data's
neighbour distances; the robustness curves, which the attack notebook also draws, are
``robustlib.reporting.curves``; the paper tables' figures, ours beside the paper's, drawn by the report
stage, are ``robustlib.reporting.paper_figures``): each function returns a Figure (never saves it;
``robustlib.reporting.plots.save_figure`` does)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from robustlib.evaluation import schema


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
