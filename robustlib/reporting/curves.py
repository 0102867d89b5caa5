"""The robustness-curves figure (paper Figure 2), drawn by the attack notebook and the report: a module of its
own, so that the attack stages depend on it and on no other figure."""

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
