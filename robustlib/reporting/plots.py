"""Figure basics that need no results schema: saving a figure, the run families every multi-run figure is
grouped by, and the learning curves (which the train notebook draws, so this module imports nothing of the
evaluation). Figures of the results: ``robustlib.reporting.figures``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from robustlib.pipeline.io import atomic_write

EPOCH = "epoch"
"""The train stage's learning curves (``curves/train/<run>.csv``, written by ``robustlib.stages.train``): one
row per epoch, one column per metric."""
RUN = "run"
"""The column that names each row's run when several runs' tables are drawn together."""

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


def grouped(runs: Mapping[str, object], families: Mapping[str, str], reference: str | None
             ) -> list[tuple[str, list[str]]]:
    """(family, runs) for each family that has runs, in FAMILIES order; ``reference`` (the undefended
    run) is drawn in every panel and belongs to none."""
    order = [name for name, _ in FAMILIES] + [OTHER_FAMILY]
    groups = {f: [r for r in runs if r != reference and families.get(r, OTHER_FAMILY) == f] for f in order}
    return [(f, rs) for f, rs in groups.items() if rs] or [(OTHER_FAMILY, [r for r in runs if r != reference])]


def stack(per_run: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One table of every run's rows, with the run in column ``run``."""
    return pd.concat([df.assign(**{RUN: run}) for run, df in per_run.items()], ignore_index=True)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save a figure as PNG with fixed metadata (so reruns produce identical bytes) and close it."""
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120, metadata={"Software": None}))
    plt.close(fig)
    return path


def learning_curves_figure(curves: Mapping[str, pd.DataFrame], metrics: Sequence[str],
                           families: Mapping[str, str] | None = None, reference: str | None = None) -> Figure:
    """One column per metric (e.g. training loss, validation accuracy) against epoch; one row per run
    family (``run_family``), one line per run, the undefended ``reference`` run dashed in every row."""
    tidy = stack(curves)
    missing = [m for m in metrics if m not in tidy.columns]
    if missing:
        raise ValueError(f"learning curves lack metrics {missing}; available: {sorted(tidy.columns)}")
    groups = grouped(curves, families or {}, reference)
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(4.8 * len(metrics), 3.2 * len(groups)),
                             squeeze=False)
    for row, (family, runs) in zip(axes, groups, strict=True):
        for ax, metric in zip(row, metrics, strict=True):
            sns.lineplot(data=tidy[tidy[RUN].isin(runs)], x=EPOCH, y=metric, hue=RUN, ax=ax,
                         legend=ax is row[-1])
            if reference in curves:
                ref = curves[reference]
                ax.plot(ref[EPOCH], ref[metric], color="k", ls="--", lw=1, label=f"{reference} (reference)")
            ax.set_title(f"{metric.replace('_', ' ')}: {family}", fontsize=9)
            ax.grid(alpha=0.3)
        if row[-1].get_legend():
            row[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7)
    fig.tight_layout()
    return fig
