"""The figures of the paper's tables, leading with the result: our numbers as bars, the paper's number
marked on the paper's rows (a line across the bar, coloured by the verdict of ``robustlib.reporting.paper.compare``), so
that a reader sees at a glance where we stand against the paper.

- ``beside_paper_figure``: one panel per column of a table (Table 1: clean and each attack; Tables 3 and 4:
  clean, PGD and our stricter worst case), one bar per run;
- ``verification_figure`` (Table 2): per verified run, clean / PGD / AutoAttack / verified accuracy at each
  eps, the paper's numbers at its 8/255; below, the cost: seconds per example and unstable ReLUs.

A module of its own (not ``robustlib.reporting.figures``, which the ablations and laplacian stages draw
with), so that a change here re-runs the report stage alone. Each function returns a Figure
(``robustlib.reporting.plots.save_figure`` saves it)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robustlib.evaluation import schema
from robustlib.reporting.labels import format_eps
from robustlib.reporting.paper import PAPER, PAPER_EPS, TOLERANCE_POINTS, PaperTable
from robustlib.reporting.plots import RUN, stack

VERDICT_COLOURS = {"reproduced": "tab:green", "not reproduced": "tab:red", "not testable here": "0.6",
                   "order claim": "0.2"}
"""The paper's mark: its number's verdict (``paper.number_verdict``), or a number that is part of an order
claim only (e.g. Table 1's training minutes)."""
VERDICT_LEGEND = {"reproduced": f"paper: reproduced (within {TOLERANCE_POINTS:g} points)",
                  "not reproduced": "paper: not reproduced",
                  "not testable here": "paper: not testable here (another setting)",
                  "order claim": "paper: part of an order claim"}
BAR = "tab:blue"
MARK_ACROSS = {"h": "|", "v": "_"}
"""The paper's number is a line across our bar (a bullet chart's target): vertical on horizontal bars ("h"),
horizontal on vertical bars ("v"); it extends past the bar, so it shows where it coincides with the bar's end."""
T2_BARS = ((schema.TABLE_CLEAN, "clean", "0.75"), (schema.T2_PGD, "PGD", "tab:orange"),
           (schema.T2_AUTOATTACK, "AutoAttack", "tab:red"), (schema.T2_VERIFIED, "verified", "tab:green"))
"""Table 2's bars per eps: (column, legend, colour), from the loosest bound on robust accuracy to the proof."""


def verdict_kind(verdict: str) -> str:
    """The kind of a verdict line (``VERDICT_COLOURS``' keys): its first words."""
    for kind in ("not testable here", "not reproduced", "reproduced"):
        if str(verdict).startswith(kind):
            return kind
    return "order claim"


def paper_marks(table: PaperTable, comparison: pd.DataFrame) -> pd.DataFrame:
    """The paper's numbers to mark: (run, metric, paper, kind) from ``comparison`` (``paper.compare``'s rows:
    the table's numbers with their verdicts) and from the table's order claims on metrics it has no number
    for (e.g. Table 1's minutes: 252 vs 1620), those of kind ``order claim``."""
    rows = [{RUN: r[schema.RUN], schema.METRIC: r[schema.METRIC], schema.PAPER_VALUE: float(r[schema.PAPER_VALUE]),
             "kind": verdict_kind(r[schema.VERDICT])} for _, r in comparison.iterrows()] if len(comparison) else []
    have = {(r[RUN], r[schema.METRIC]) for r in rows}
    numbers = {m for vals in table.values.values() for m in vals}  # the metrics the table gives numbers of
    for o in table.orders:
        for run, value in zip((o.better, o.worse), o.paper, strict=True):
            if (run, o.metric) not in have and o.metric not in numbers:
                rows.append({RUN: run, schema.METRIC: o.metric, schema.PAPER_VALUE: float(value),
                             "kind": "order claim"})
                have.add((run, o.metric))
    return pd.DataFrame(rows, columns=[RUN, schema.METRIC, schema.PAPER_VALUE, "kind"])


def _number(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _legend_handles(kinds, bars: str) -> list[Line2D]:
    return [Line2D([], [], marker=MARK_ACROSS[bars], ls="", markeredgecolor=VERDICT_COLOURS[k], markersize=10,
                   markeredgewidth=2.5, label=VERDICT_LEGEND[k]) for k in VERDICT_COLOURS if k in set(kinds)]


def _mark(ax, x: float, y: float, kind: str, bars: str, size: float) -> None:
    """The paper's number across a bar (``MARK_ACROSS``), coloured by its verdict."""
    ax.plot([x], [y], marker=MARK_ACROSS[bars], ls="", markersize=size, markeredgewidth=2.5,
            markeredgecolor=VERDICT_COLOURS[kind], zorder=5)


def _wrapped(title: str, fig: Figure) -> str:
    """A 9-point title wrapped to the figure's width (about 13 characters per inch)."""
    return textwrap.fill(title, max(40, int(13 * fig.get_figwidth())))


def _percent_panel(ax, y, values: Sequence[float], raw: Sequence) -> None:
    """Horizontal bars of percentages on 0-100, each value written inside a long bar at its base (a paper's
    mark sits further out) or after a short bar's end; a value that is not a number is written as it is."""
    ax.barh(y, [v if math.isfinite(v) else 0 for v in values], color=BAR, alpha=0.85, height=0.7)
    for yi, v, r in zip(y, values, raw, strict=True):
        inside = math.isfinite(v) and v >= 22
        ax.text(2 if inside else (v if math.isfinite(v) else 0) + 2, yi, f"{v:.1f}" if math.isfinite(v) else str(r),
                va="center", fontsize=7, zorder=6, color="white" if inside else ("k" if math.isfinite(v) else "0.4"))
    ax.set_xlim(0, 100)


def _minutes_panel(ax, y, values: Sequence[float], marks: pd.DataFrame, runs: Sequence[str]) -> None:
    """Training minutes as dots on a log scale, each written beside its dot, the paper's as marks."""
    finite = [v for v in values if math.isfinite(v) and v > 0] + [v for v in marks[schema.PAPER_VALUE] if v > 0]
    lo, hi = (min(finite) / 3, max(finite) * 4) if finite else (0.1, 10.0)
    for yi, v in zip(y, values, strict=True):
        if math.isfinite(v) and v > 0:
            ax.plot([lo, v], [yi, yi], color=BAR, alpha=0.5, lw=1)
            ax.plot([v], [yi], "o", color=BAR, markersize=5)
            ax.text(v * 1.25, yi, f"{v:.1f}", va="center", fontsize=7, zorder=6)
    for _, r in marks.iterrows():
        if r[RUN] in runs:
            _mark(ax, r[schema.PAPER_VALUE], runs.index(r[RUN]), r["kind"], "h", 15)
            ax.text(r[schema.PAPER_VALUE] * 1.25, runs.index(r[RUN]) - 0.3, f"paper {r[schema.PAPER_VALUE]:g}",
                    fontsize=6, color="0.3")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)


def beside_paper_figure(ours: pd.DataFrame, columns: Sequence[str], table: PaperTable, comparison: pd.DataFrame,
                        title: str, setting: str = "") -> Figure:
    """One panel per column of ``ours`` (a table with a ``run`` column; accuracies in % unless the column is
    ``train_minutes``, drawn on a log scale), one horizontal bar per run with its value written; the paper's
    numbers (``paper_marks``) as lines across the bars of its rows, coloured by verdict; a value that is not a
    number (``n/a``: the attack does not apply; ``-``: not measured) is written instead of a bar. The paper's
    runs are in bold; ``setting``: ours in words (e.g. the dataset), beside the paper's in the title."""
    ours = ours.reset_index(drop=ours.index.name != RUN) if RUN not in ours.columns else ours
    runs = list(ours[RUN])
    columns = [c for c in columns if c in ours.columns]
    marks = paper_marks(table, comparison)
    paper_runs = set(table.rows)
    height = 0.9 + 0.3 * len(runs)
    fig, axes = plt.subplots(1, len(columns), figsize=(1.55 * len(columns) + 2.4, height + 1.0), sharey=True,
                             squeeze=False, layout="constrained")
    y = np.arange(len(runs))
    for ax, col in zip(axes[0], columns, strict=True):
        values = [_number(v) for v in ours[col]]
        m = marks[marks[schema.METRIC] == col]
        if col == schema.TRAIN_MINUTES:  # minutes on a log scale: ours (CPU, small networks) and the paper's GPU
            _minutes_panel(ax, y, values, m, runs)  # minutes differ by orders of magnitude; the order is the claim
        else:
            _percent_panel(ax, y, values, list(ours[col]))
            for _, r in m.iterrows():
                if r[RUN] in runs:
                    _mark(ax, r[schema.PAPER_VALUE], runs.index(r[RUN]), r["kind"], "h", 15)
        ax.set_title(col.replace("_%", " (%)") if col != schema.TRAIN_MINUTES else "training minutes (log)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    axes[0, 0].set_yticks(y, runs, fontsize=8)
    for label in axes[0, 0].get_yticklabels():
        if label.get_text() in paper_runs:
            label.set_fontweight("bold")
    axes[0, 0].invert_yaxis()
    handles = [Line2D([], [], marker="s", ls="", color=BAR, markersize=8, label="ours"),
               *_legend_handles(marks["kind"], "h")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(_wrapped(f"{title}: ours (bars{', ' + setting if setting else ''}) beside {PAPER} (lines across "
                          f"the bars of the paper's rows, in bold; paper: {table.dataset}"
                          f"{', ' + table.model if table.model else ''})", fig), fontsize=9)
    return fig


def verification_figure(t2: pd.DataFrame, comparison: pd.DataFrame, table: PaperTable,
                        per_example: Mapping[str, pd.DataFrame], dataset: str | None = None) -> Figure:
    """Table 2 leading with the result: one panel per verified run (the rows of ``t2``,
    ``tables.verification_table``), clean / PGD / AutoAttack / verified accuracy (%) at each eps (written as
    the paper writes it, ``format_eps``), the paper's numbers (``paper_marks``) as lines across the bars of its
    8/255; below, the cost per example and eps: verification seconds (log scale) and unstable ReLUs, from the
    per-example tables (``per_example``: run -> ``verify/<run>.csv``)."""
    runs = list(dict.fromkeys(t2[RUN])) if len(t2) else []
    marks = paper_marks(table, comparison)
    tidy = stack({r: df for r, df in per_example.items() if len(df)}) if per_example else pd.DataFrame()
    fig = plt.figure(figsize=(max(2.6 * len(runs) + 1.5, 9.0), 7.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1.0])
    axes = top.subplots(1, max(len(runs), 1), sharey=True, squeeze=False)[0]
    width, drawn = 0.8 / len(T2_BARS), set()
    for ax, run in zip(axes, runs, strict=False):
        drawn |= _verification_panel(ax, t2[t2[RUN] == run].sort_values(schema.EPS), run, marks, table, dataset,
                                     width)
    axes[0].set_ylabel("accuracy (%)")
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    bars = [Line2D([], [], marker="s", ls="", color=c, markersize=8, label=lab) for _, lab, c in T2_BARS]
    top.legend(handles=[*bars, *_legend_handles(drawn, "v")], loc="outside lower center",
               ncol=len(T2_BARS) + 3, fontsize=8, frameon=False)
    paper_eps = format_eps(PAPER_EPS, "cifar10")
    where = (f"lines across the bars at {paper_eps}" if drawn else
             f"none drawn: the paper's eps {paper_eps} is not among ours")
    top.suptitle(_wrapped(f"Table 2 analog: complete verification, ours (bars; examples per run: the table's n) "
                          f"beside {PAPER} ({where}; paper: {table.dataset}, {table.model})", fig), fontsize=9)
    _cost_panels(bottom, tidy, runs, dataset)
    return fig


def _verification_panel(ax, rows: pd.DataFrame, run: str, marks: pd.DataFrame, table: PaperTable,
                        dataset: str | None, width: float) -> set[str]:
    """One run's panel of ``verification_figure``: its bars per eps (``rows``: its rows of Table 2), their values,
    and the paper's marks at the paper's eps. Returns the kinds of mark drawn."""
    drawn: set[str] = set()
    x = np.arange(len(rows))
    for k, (col, label, colour) in enumerate(T2_BARS):
        values = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, np.nan_to_num(values), width=width * 0.95, color=colour, label=label)
        for p, v in zip(pos, values, strict=True):  # inside a tall bar, at its base (a mark sits higher)
            inside = math.isfinite(v) and v >= 14
            ax.text(p, 1.5 if inside else (v if math.isfinite(v) else 0) + 1.5,
                    f"{v:.0f}" if math.isfinite(v) else "-", ha="center", va="bottom", fontsize=6.5,
                    rotation=90, color="white" if inside else "k", zorder=6)
        at = [i for i, e in enumerate(rows[schema.EPS]) if abs(float(e) - PAPER_EPS) < 1e-6]
        for _, r in marks[(marks[RUN] == run) & (marks[schema.METRIC] == col)].iterrows():
            for i in at:
                _mark(ax, x[i] - 0.4 + width * (k + 0.5), r[schema.PAPER_VALUE], r["kind"], "v", 16)
                drawn.add(r["kind"])
    ax.set_xticks(x, [format_eps(e, dataset) for e in rows[schema.EPS]], fontsize=8)
    ax.set_xlabel("L-inf eps", fontsize=8)
    ax.set_ylim(0, 112)
    paper_row = table.rows.get(run)
    ax.set_title(textwrap.fill(run + (f" (paper: {paper_row})" if paper_row else ""), 34), fontsize=8,
                 fontweight="bold" if paper_row else "normal")
    ax.grid(axis="y", alpha=0.3)
    return drawn


def _cost_panels(bottom, tidy: pd.DataFrame, runs: list[str], dataset: str | None) -> None:
    """The lower half of ``verification_figure``: verification seconds (log scale) and unstable ReLUs per example,
    per run (in the panels' order) and eps, from the stacked per-example tables ``tidy``."""
    ax1, ax2 = bottom.subplots(1, 2)
    if len(tidy):
        tidy = tidy.assign(**{schema.EPS: [format_eps(e, dataset) for e in tidy[schema.EPS]]})
        order = [r for r in runs if r in set(tidy[RUN])] or None  # the panels' order above
        sns.boxplot(data=tidy, x=RUN, y=schema.VERIFY_SECONDS, hue=schema.EPS, order=order, ax=ax1)
        sns.boxplot(data=tidy, x=RUN, y=schema.VERIFY_UNSTABLE, hue=schema.EPS, order=order, ax=ax2, legend=False)
        ax1.set_yscale("log")
    ax1.set_ylabel("seconds per example", fontsize=8)
    ax2.set_ylabel("unstable ReLUs per example", fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=25, labelsize=7)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.grid(alpha=0.3)
    bottom.suptitle("the cost: verification time and unstable ReLUs per example", fontsize=9)
