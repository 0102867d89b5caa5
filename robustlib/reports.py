"""Figures (functions return a Figure, never save) and tables for the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from robustlib.io import atomic_write  # noqa: E402


def training_table(metrics: Sequence[Mapping]) -> pd.DataFrame:
    """One row per run: clean accuracy (%) and training minutes, from the train stage's metrics."""
    rows = [{
        "run": m["run"],
        "model": m["model"],
        "objective": " + ".join(m["objective"]),
        "epochs": m["epochs"],
        "n_train": m["n_train"],
        "clean_acc_%": round(100 * m["clean_acc"], 2),
        "n_test": m["n_test"],
        "train_minutes": round(m["train_minutes"], 2),
    } for m in metrics]
    return pd.DataFrame(rows).sort_values("run").reset_index(drop=True)


def learning_curves_figure(curves: Mapping[str, pd.DataFrame], metrics: Sequence[str]) -> Figure:
    """One panel per metric (e.g. training loss, validation accuracy) against epoch, one line per run."""
    tidy = pd.concat([df.assign(run=run) for run, df in curves.items()], ignore_index=True)
    missing = [m for m in metrics if m not in tidy.columns]
    if missing:
        raise ValueError(f"learning curves lack metrics {missing}; available: {sorted(tidy.columns)}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        sns.lineplot(data=tidy, x="epoch", y=metric, hue="run", marker="o", ax=ax)
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
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
