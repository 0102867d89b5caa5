"""Figures, tables and the report section of a weight sweep (``robustlib.pipeline.sweeps``). Figures are
returned, never saved (``reporting.tables.save_figure`` saves them)."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from robustlib.pipeline.sweeps import DEFAULT_READING, summary_path

REFERENCE_COLUMNS = ["run", "n_test", "clean_%", "PGD_%", "AA_%", "worst_linf_%"]


def _pct(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100 * float(v), 2)


def cells_table(rows: Sequence[Mapping]) -> pd.DataFrame:
    """One row per cell: weights (absolute and as factors of the paper's point), reading, clean and PGD accuracy
    (%) on the validation images (and test examples when evaluated), the epoch its predictions became constant
    (``collapsed_at``), the epoch its loss turned non-finite (``diverged_at``), epochs trained and minutes."""
    out = []
    for r in rows:
        row = {"cell": r["cell"], "gamma_H": r["gamma_h"], "gamma_S": r["gamma_s"],
               "x_H": r["gamma_h_factor"], "x_S": r["gamma_s_factor"], "reading": r["reading"],
               "val_clean_%": _pct(r["val_clean_acc"]), "val_PGD_%": _pct(r["val_pgd_acc"])}
        if "test_clean_acc" in r:
            row.update({"test_clean_%": _pct(r["test_clean_acc"]), "test_PGD_%": _pct(r["test_pgd_acc"])})
        row.update({"collapsed_at": r["collapsed_epoch"] if r["collapsed_epoch"] is not None else "-",
                    "diverged_at": r["diverged_epoch"] if r["diverged_epoch"] is not None else "-",
                    "epochs": r["epochs_completed"], "train_minutes": round(float(r["train_minutes"]), 2)})
        out.append(row)
    return pd.DataFrame(out)


def references_table(references: Sequence[Mapping]) -> pd.DataFrame:
    """The reference runs' clean, PGD, AutoAttack and worst-case L-inf accuracy (%), from their attack stage."""
    return pd.DataFrame([{"run": r["run"], "n_test": r.get("n"), "clean_%": _pct(r.get("clean_acc")),
                          "PGD_%": _pct(r.get("pgd_linf_acc")), "AA_%": _pct(r.get("aa_linf_acc")),
                          "worst_linf_%": _pct(r.get("worst_linf_acc"))} for r in references],
                        columns=REFERENCE_COLUMNS)


def _grid(rows: Sequence[Mapping], key: str) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    hs = sorted({r["gamma_h"] for r in rows}, reverse=True)
    ss = sorted({r["gamma_s"] for r in rows}, reverse=True)
    values, collapsed = np.full((len(hs), len(ss)), np.nan), np.full((len(hs), len(ss)), np.nan)
    for r in rows:
        i, j = hs.index(r["gamma_h"]), ss.index(r["gamma_s"])
        values[i, j] = 100 * float(r[key])
        if r["collapsed_epoch"] is not None:
            collapsed[i, j] = r["collapsed_epoch"]
    return hs, ss, values, collapsed


def accuracy_figure(rows: Sequence[Mapping], paper_h: float, paper_s: float, references: Sequence[Mapping],
                    selected: str | None, eps: float) -> Figure:
    """Heatmaps of validation clean and PGD accuracy (%) over (gamma_H, gamma_S) for the default reading of eq. 17:
    the point of factor 1 (``paper_h``, ``paper_s``: the paper's in the profiles' sweeps) outlined in black, the
    selected cell in green, ``C<e>`` marks a cell whose predictions became constant at epoch e (stopped early); the
    reference runs' test accuracies in each panel's title and as red marks on the colour scales. A third panel
    shows the cells of other readings (at the best grid cell), when there are any."""
    grid = [r for r in rows if r["reading"] == DEFAULT_READING]
    others = [r for r in rows if r["reading"] != DEFAULT_READING]
    ncols = 3 if others else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.6 * ncols, 4.2), squeeze=False)
    axes = axes[0]
    ref = "; ".join(f"{r['run']} {_pct(r.get('clean_acc'))}/{_pct(r.get('pgd_linf_acc'))}" for r in references)
    panels = ((axes[0], "val_clean_acc", "clean_acc", "clean"),
              (axes[1], "val_pgd_acc", "pgd_linf_acc", f"PGD (L-inf {eps:.4g})"))
    for ax, key, ref_key, title in panels:
        _heatmap(fig, ax, grid, key, references, ref_key, paper_h, paper_s, selected)
        ax.set_title(f"validation {title} (%)" + (f"\nreference clean/PGD (test): {ref}" if ref else ""), fontsize=8)
    if others:
        _readings_panel(axes[2], others)
    _caption(fig, paper_h, paper_s, ncols)
    return fig


def _heatmap(fig: Figure, ax, grid: Sequence[Mapping], key: str, references: Sequence[Mapping], ref_key: str,
             paper_h: float, paper_s: float, selected: str | None) -> None:
    """One panel of ``accuracy_figure``: the grid cells' ``key`` (%) with its colour scale, the point of factor 1
    and the selected cell outlined."""
    hs, ss, values, collapsed = _grid(grid, key)
    top = max([100 * float(r[key]) for r in grid] + [_pct(r.get(ref_key)) or 0 for r in references] + [1])
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1.2 * top, aspect="auto")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="%")
    _reference_marks(bar, references, ref_key)
    _cell_labels(ax, values, collapsed, 0.6 * im.get_clim()[1])
    for r in grid:
        i, j = hs.index(r["gamma_h"]), ss.index(r["gamma_s"])
        if math.isclose(r["gamma_h"], paper_h) and math.isclose(r["gamma_s"], paper_s):
            ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, lw=2.5, ec="black"))
        if r["cell"] == selected:
            ax.add_patch(Rectangle((j - 0.4, i - 0.4), 0.8, 0.8, fill=False, lw=2, ec="lime", ls="--"))
    ax.set_xticks(range(len(ss)), [f"{s:g}" for s in ss])
    ax.set_yticks(range(len(hs)), [f"{h:g}" for h in hs])
    ax.set_xlabel("gamma_S (start of ramp)")
    ax.set_ylabel("gamma_H (start of ramp)")


def _reference_marks(bar, references: Sequence[Mapping], ref_key: str) -> None:
    """The reference runs' accuracies (``ref_key``, %) as red marks on the colour scale ``bar``."""
    for r in references:
        if _pct(r.get(ref_key)) is not None:
            bar.ax.axhline(_pct(r.get(ref_key)), color="red", lw=1.5)
            bar.ax.text(0.5, _pct(r.get(ref_key)), r["run"], color="red", fontsize=5.5, va="bottom", ha="center",
                        rotation=90, transform=bar.ax.get_yaxis_transform(),
                        bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 0.5})


def _cell_labels(ax, values: np.ndarray, collapsed: np.ndarray, dark_below: float) -> None:
    """Each cell's value and ``C<e>`` where it collapsed; white on cells darker than ``dark_below``."""
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isnan(values[i, j]):
                continue
            text = f"{values[i, j]:.1f}" + (f"\nC{int(collapsed[i, j])}" if not np.isnan(collapsed[i, j]) else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] < dark_below else "black")


def _readings_panel(ax, others: Sequence[Mapping]) -> None:
    """Clean and PGD validation accuracy (%) of the cells of other readings of eq. 17, as bars."""
    labels = [r["reading"] for r in others]
    x = np.arange(len(others))
    ax.bar(x - 0.2, [100 * float(r["val_clean_acc"]) for r in others], 0.4, label="clean")
    ax.bar(x + 0.2, [100 * float(r["val_pgd_acc"]) for r in others], 0.4, label="PGD")
    for k, r in enumerate(others):
        if r["collapsed_epoch"] is not None:
            ax.annotate(f"C{r['collapsed_epoch']}", (k - 0.2, 100 * float(r["val_clean_acc"])), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(x, labels, rotation=20, fontsize=8)
    ax.set_ylabel("validation accuracy (%)")
    o = others[0]
    ax.set_title(f"other readings of eq. 17 at gamma_H {o['gamma_h']:g}, gamma_S {o['gamma_s']:g}", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")


def _caption(fig: Figure, paper_h: float, paper_s: float, ncols: int) -> None:
    """``accuracy_figure``'s legend of marks, below its panels (the layout leaves room for it)."""
    caption = textwrap.fill(f"black box: the point of factor 1 (gamma_H {paper_h:g}, gamma_S {paper_s:g}: the paper's "
                            "in the cifar10-cpu and mnist-survey sweeps); green dashed: "
                            "the selected cell; C<e>: predictions constant from epoch e (stopped early); red marks on "
                            "the colour scales: reference runs (test examples)", width=55 * ncols)
    fig.text(0.01, 0.01, caption, fontsize=7)
    fig.tight_layout(rect=(0, 0.03 * (caption.count("\n") + 1) + 0.01, 1, 1))


def diagnostics_figure(curves: Mapping[str, pd.DataFrame], collapsed: Mapping[str, int | None]) -> Figure:
    """Per-epoch probe diagnostics of every cell (``robustlib.training.diagnostics``): row 1 the fraction of dead
    units per ReLU layer, row 2 the fraction of unstable units (sign differs between x + rho and x - rho) per
    layer, row 3 the gradient norm of each weighted term; collapsed cells in red shades, the others in blue."""
    layers = sorted({int(c.removeprefix("diag_dead_l")) for df in curves.values() for c in df.columns
                     if c.startswith("diag_dead_l")})
    terms = sorted({c.removeprefix("diag_grad_") for df in curves.values() for c in df.columns
                    if c.startswith("diag_grad_") and c != "diag_grad_total"})
    ncols = max(len(layers), len(terms), 1)
    fig, axes = plt.subplots(3, ncols, figsize=(3.6 * ncols, 8.4), squeeze=False)
    down = [c for c in curves if collapsed.get(c) is not None]
    up = [c for c in curves if collapsed.get(c) is None]
    colours = {c: plt.cm.Reds(0.45 + 0.5 * k / max(len(down) - 1, 1)) for k, c in enumerate(down)}
    colours.update({c: plt.cm.Blues(0.45 + 0.5 * k / max(len(up) - 1, 1)) for k, c in enumerate(up)})
    panels = [(0, f"diag_dead_l{j}", f"dead units, ReLU layer {j}") for j in layers]
    panels += [(1, f"diag_unstable_l{j}", f"unstable units, ReLU layer {j}") for j in layers]
    panels += [(2, f"diag_grad_{t}", f"|grad| of weighted {t}") for t in terms]
    used = set()
    for row, col_name, title in panels:
        col = len([p for p in used if p[0] == row])
        used.add((row, col))
        ax = axes[row][col]
        for cell, df in curves.items():
            if col_name in df and len(df):
                label = cell + (f" (C{collapsed[cell]})" if collapsed.get(cell) is not None else "")
                ax.plot(df["epoch"], df[col_name], color=colours[cell], lw=1.2, marker="o", ms=2.5, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if row == 2:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for row in range(3):
        for col in range(ncols):
            if (row, col) not in used:
                axes[row][col].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7,
                   bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("probe diagnostics per epoch: collapsed cells in red (C<e>: predictions constant from epoch e), "
                 "the others in blue", fontsize=9)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 4), 1, 0.98))
    return fig


def collapse_routes(curves: Mapping[str, pd.DataFrame], collapsed: Mapping[str, int | None]) -> list[dict]:
    """How each cell went, from its per-epoch probe diagnostics (``robustlib.training.diagnostics``): the first
    epoch at which a weighted regularizer's gradient norm on the probe batch reached cross-entropy's (``reached``,
    by ``term``), the largest ratio of a regularizer's gradient to cross-entropy's (``max_ratio``), both over the
    epochs before the collapse epoch (cross-entropy's own gradient vanishes once predictions are constant), and the
    fraction of dead units per ReLU layer at the collapse epoch (the last epoch for a surviving cell). Cells
    without diagnostics are left out."""
    routes = []
    for cell, df in curves.items():
        terms = [c.removeprefix("diag_grad_") for c in df.columns
                 if c.startswith("diag_grad_") and c not in ("diag_grad_ce", "diag_grad_total")]
        if "diag_grad_ce" not in df or not terms or not len(df):
            continue
        at = collapsed.get(cell)
        before = df[df["epoch"] < at] if at is not None else df
        ratios = before[[f"diag_grad_{t}" for t in terms]].div(before["diag_grad_ce"], axis=0)
        reached = ratios.max(axis=1) >= 1.0
        first = int(before["epoch"][reached].iloc[0]) if reached.any() else None
        term = terms[int(ratios[reached].iloc[0].to_numpy().argmax())] if reached.any() else None
        last = df[df["epoch"] == at] if at is not None else df.tail(1)
        layers = sorted(int(c.removeprefix("diag_dead_l")) for c in df.columns if c.startswith("diag_dead_l"))
        routes.append({"cell": cell, "collapsed_at": at, "reached": first, "term": term,
                       "max_ratio": round(float(ratios.max().max()), 4) if len(ratios) else None,
                       "dead": {j: round(float(last[f"diag_dead_l{j}"].iloc[0]), 4) for j in layers} if len(last)
                       else {}})
    return routes


def routes_summary(routes: Sequence[Mapping]) -> str:
    """One paragraph on ``collapse_routes``: how many collapsed cells had a regularizer's gradient reach
    cross-entropy's first (which term, at which epochs), how many surviving cells did, and how dead the last ReLU
    layer was at the collapse."""
    down = [r for r in routes if r["collapsed_at"] is not None]
    up = [r for r in routes if r["collapsed_at"] is None]
    if not routes:
        return "No cell recorded probe diagnostics."

    parts = []
    for term in sorted({r["term"] for r in down if r["term"]}):
        rs = sorted((r for r in down if r["term"] == term), key=lambda r: r["reached"])
        pairs = ", ".join(f"{r['reached']} -> {r['collapsed_at']}" for r in rs)
        parts.append(f"in {len(rs)} the {term} term's weighted gradient reached cross-entropy's first (epoch reached "
                     f"-> epoch collapsed: {pairs})")
    without = [r for r in down if r["term"] is None]
    if without:
        parts.append(f"in {len(without)} no regularizer's gradient reached cross-entropy's (largest ratio "
                     f"{', '.join(format(r['max_ratio'], '.2g') for r in without)})")
    text = (f"Collapse routes (probe diagnostics, the epochs before each collapse): of {len(down)} collapsed cells, "
            + "; ".join(parts) + ". ") if down else "No cell collapsed. "
    reached_up = [r for r in up if r["term"]]
    text += (f"Of {len(up)} surviving cells, {len(reached_up)} had a regularizer's gradient reach cross-entropy's"
             + (f" ({', '.join(r['cell'] for r in reached_up)})" if reached_up else "")
             + (f"; their largest ratios: {min(r['max_ratio'] for r in up):.2f} to "
                f"{max(r['max_ratio'] for r in up):.2f}" if up else "") + ". ")
    if down and down[0]["dead"]:
        top = max(down[0]["dead"])
        dead = [100 * r["dead"][top] for r in down if top in r["dead"]]
        span = f"{min(dead):.1f}%" if min(dead) == max(dead) else f"{min(dead):.1f}-{max(dead):.1f}%"
        text += (f"At the collapse epoch, ReLU layer {top} (the last) was {span} dead (median "
                 f"{float(np.median(dead)):.1f}%).")
    return text


def _fmt(v: object) -> str:
    return "-" if v is None else (f"{100 * v:.2f}" if isinstance(v, float) else str(v))


def sweep_section(summary: Mapping, figures_rel: str, tables_rel: str) -> list[str]:
    """Markdown lines of one sweep's report section from its summary (``sweeps.summary_path``); figures and the
    table are linked relative to the report (``figures_rel``/``tables_rel``: their folders)."""
    s = summary
    ev = s["eval"]
    readings = "; ".join(f"`{k}` = {v}" for k, v in s["readings"].items())
    lines = [f"## Weight sweep `{s['sweep']}` (gamma_H x gamma_S, readings of eq. 17)", "",
             f"Cells copy run `{s['base_run']}`'s training; only the starting weights of the Hamming and stability "
             f"terms (both then ramp 10x as in appendix A) and, in the reading cells, the reading of eq. 17 change. "
             f"Factors multiply gamma_H {s['paper_point']['gamma_h']:g}, gamma_S {s['paper_point']['gamma_s']:g} "
             f"(the paper's point, appendix A, in the cifar10-cpu and mnist-survey sweeps; grid: {s['grid']}). "
             f"Readings of eq. 17 (per layer j, H_k = eq. 11, averaged over layers and examples): {readings}. "
             f"Clean and PGD accuracy ({ev['steps']} steps x {ev['restarts']} restarts, "
             f"step 2.5 eps/{ev['steps']}, L-inf eps {ev['eps']:g}) on the first {ev['n_val']} VALIDATION images "
             f"(the selection set)" + (f" and on {ev['n_test']} test examples" if ev["n_test"] else "")
             + f". Selection: {s['rule']}. " + (
                 f"`collapsed_at`: the first epoch of {s['stop_on_collapse']} or more consecutive epochs whose "
                 "predictions on the probe batch (first 128 validation images) were one class; such a cell stopped "
                 "early and is not eligible." if s.get("stop_on_collapse") else
                 "The cells were not stopped on collapse."), ""]
    table = Path(tables_rel) / Path(s["table"]).name
    lines += [f"Table: [{table.as_posix()}]({table.as_posix()})", ""]
    lines += _markdown(pd.DataFrame(s["cells"], columns=s.get("cell_columns")))
    lines += ["", f"![sweep accuracy]({figures_rel}/{Path(s['figures']['accuracy']).name})", ""]
    if s["reference_table"]:
        lines += ["Reference runs of this profile (attack stage, test examples):", ""]
        lines += _markdown(pd.DataFrame(s["reference_table"], columns=REFERENCE_COLUMNS)) + [""]
    sel = s["selected"]
    if sel is None:
        lines += ["**No cell was selected**: every cell collapsed or diverged in its first epoch.", ""]
    else:
        st = s["selected_setting"]
        lines += [f"**Selected: `{sel}`** (gamma_H {st['gamma_h']:g}, gamma_S {st['gamma_s']:g}, reading "
                  f"`{st['reading']}`); best grid cell: `{s['best_grid_cell']}`.", ""]
    if s["readings_pending"]:
        lines += [f"Pending: readings {s['readings_pending']} are to be trained at the best grid cell (set "
                  f"`readings_at` in the profile to its factors).", ""]
    if s.get("autoattack"):
        a = s["autoattack"]
        lines += [f"AutoAttack ({a['version']}, L-inf {a['eps']:g}) on the selected cell, {a['n']} test examples: "
                  f"clean {100 * a['clean_acc']:.2f}%, robust {100 * a['aa_acc']:.2f}%.", ""]
    if s["seeded_runs"]:
        lines += [f"The selected setting with seeds {s['seeds']} (regular runs; full attack suite and complete "
                  "verification in Tables 1-2; checked to carry the selected weights and reading):", ""]
        rows = [{"run": r["run"], "clean_%": _fmt(r.get("clean_acc")), "PGD_%": _fmt(r.get("pgd_linf_acc")),
                 "AA_%": _fmt(r.get("aa_linf_acc")),
                 **{f"verified_%@{e}": _fmt(v) for e, v in (r.get("verified") or {}).items()},
                 **({"pending": ", ".join(k for k in ("attack", "verify") if r.get(k) == "pending")}
                    if "pending" in (r.get("attack"), r.get("verify")) else {})} for r in s["seeded_runs"]]
        lines += _markdown(pd.DataFrame(rows + _mean_sd(s["seeded_runs"]))) + [""]
    elif sel is not None and s["seeds"]:
        lines += [f"Pending: the selected setting with seeds {s['seeds']} as regular runs (add them to `runs` and "
                  "to `seeded_runs`).", ""]
    lines += [f"![sweep diagnostics]({figures_rel}/{Path(s['figures']['diagnostics']).name})", ""]
    if s.get("collapse_routes") is not None:
        lines += [routes_summary(s["collapse_routes"]), ""]
    return lines


def _mean_sd(seeded: Sequence[Mapping]) -> list[dict]:
    """A 'mean +/- sd' row over the seeded runs (in %), when at least two have every number."""
    keys = ("clean_acc", "pgd_linf_acc", "aa_linf_acc")
    done = [r for r in seeded if all(isinstance(r.get(k), (int, float)) for k in keys)]
    if len(done) < 2:
        return []
    row = {"run": f"mean +/- sd ({len(done)} seeds)"}
    for k, col in zip(keys, ("clean_%", "PGD_%", "AA_%"), strict=True):
        v = np.array([100 * float(r[k]) for r in done])
        row[col] = f"{v.mean():.2f} +/- {v.std(ddof=1):.2f}"
    for e in sorted({e for r in done for e in (r.get("verified") or {})}):
        v = np.array([100 * float(r["verified"][e]) for r in done if (r.get("verified") or {}).get(e) is not None])
        if len(v) >= 2:
            row[f"verified_%@{e}"] = f"{v.mean():.2f} +/- {v.std(ddof=1):.2f}"
    return [row]


def _markdown(df: pd.DataFrame) -> list[str]:
    if not len(df):
        return ["(none)"]
    return df.astype(object).where(df.notna(), "-").to_markdown(index=False).splitlines()


def sweep_sections(input_root: Path, figures_rel: str, tables_rel: str) -> list[str]:
    """The report's sections of every sweep whose summary is under ``input_root``/metrics/sweep/ (none: [])."""
    lines: list[str] = []
    for f in sorted(summary_path(Path(input_root), "*").parent.glob("*.json")):
        lines += sweep_section(json.loads(f.read_text()), figures_rel, tables_rel)
    return lines
