"""The adversarial-example gallery: a few test images of a few runs, clean and under each attack of the
paper's Table 1, with the model's prediction and the perturbation, so that a reader sees what the numbers
count.

The images are the first ``n`` of the attack stage's evaluation order (``Split.test_examples``), the
attacks those of the attack stage's suite (``robustlib.evaluation.suite.attack_suite``, the same params,
seed and LPIPS network) named in ``GALLERY_ATTACKS``, run by the attack stage's engine
(``robustlib.evaluation.worst_case.evaluate_attacks``: the global RNG seeded before each attack, every ball
attack's points checked to lie in its ball) in the gallery stage (``robustlib.stages.gallery``), which
hands each run's images, points and predictions here (``GalleryRun``). They run on the ``n`` images only,
so an attack's random starts differ from the attack stage's run on ``attack.n_test`` images and an outcome
may differ on an image; the report counts how often (``attack_stage_agreement``). This module runs no
attack, so the report stage, which reads the gallery's table, does not depend on the attack engine.

Outputs: ``figures/gallery.png`` and the tidy ``tables/gallery.csv`` (``robustlib.pipeline.paths``), one row
per run, image and attack (``clean`` first), its columns in ``robustlib.evaluation.schema`` (``GALLERY_COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from robustlib.evaluation import schema
from robustlib.evaluation.suite import AA_L2, AA_LINF, JPEG, LPA, RECOLORADV, STADV, AttackSuite, SuiteAttack
from robustlib.reporting.labels import class_name, format_eps

GALLERY_ATTACKS = (AA_LINF, AA_L2, STADV, RECOLORADV, JPEG, LPA)
"""The attacks of the paper's Table 1 (its NPTM column by LPA), in its column order; those the profile's
``attack`` params configure are shown."""
TITLES = {AA_LINF: "AutoAttack L-inf", AA_L2: "AutoAttack L2", STADV: "StAdv", RECOLORADV: "ReColorAdv",
          JPEG: "JPEG-L-inf", LPA: "LPA"}
CLEAN = schema.GALLERY_CLEAN

AMPLIFY_TARGET = 0.5
"""The perturbation is drawn as 0.5 + factor * (x_adv - x), clipped to [0, 1]: the factor brings the
``AMPLIFY_QUANTILE`` of its entries' sizes (over the attacked images of both runs in an attack's row) to at most
this, so that it is visible and hardly clipped."""
AMPLIFY_QUANTILE = 0.99
"""Not the largest entry: an L2 attack may move a few pixels far and the rest little (then a factor set by the
largest would leave most of the perturbation invisible); the largest 1% may be clipped."""
NEGLIGIBLE = 1e-6
"""A perturbation no larger than this (float noise) is drawn unamplified."""


@dataclass
class GalleryRun:
    """One run's gallery: its images, labels and test indices, the predictions (``CLEAN`` and each attack
    that applied) and points (each attack that applied), which images were attacked, and the attacks that
    did not apply, with why."""

    run: str
    x: torch.Tensor
    y: torch.Tensor
    index: list[int]
    predictions: dict[str, torch.Tensor]
    points: dict[str, torch.Tensor]
    attacked: torch.Tensor  # per image: classified correctly, so attacked (else its point is the clean image)
    not_applicable: dict[str, str] = field(default_factory=dict)


def gallery_attacks(suite: AttackSuite) -> list[SuiteAttack]:
    """The suite's attacks of ``GALLERY_ATTACKS``, in that order."""
    return [suite[name] for name in GALLERY_ATTACKS if name in suite]


def budget(attack: SuiteAttack) -> float:
    """An attack's budget: its ball's eps, or a perceptual attack's ``eps``."""
    return float(attack.threat.eps if attack.threat is not None else attack.budget["eps"])


def gallery_table(runs: Sequence[GalleryRun], attacks: Sequence[SuiteAttack]) -> pd.DataFrame:
    """One row per run, image and attack (``schema.GALLERY_COLUMNS``), ``CLEAN`` first, in ``attacks``' order."""
    rows = []
    for g in runs:
        for i, idx in enumerate(g.index):
            label = int(g.y[i])
            for name, eps in [(CLEAN, None), *((a.name, budget(a)) for a in attacks)]:
                row = {schema.RUN: g.run, schema.INDEX: idx, schema.LABEL: label, schema.ATTACK: name,
                       schema.BUDGET: eps, schema.ATTACKED: None if name == CLEAN else bool(g.attacked[i]),
                       schema.PREDICTION: None, schema.CORRECT: None, schema.DELTA_LINF: None, schema.DELTA_L2: None,
                       schema.NOT_APPLICABLE: g.not_applicable.get(name)}
                if name in g.predictions:
                    pred = int(g.predictions[name][i])
                    delta = g.points[name][i] - g.x[i] if name in g.points else torch.zeros_like(g.x[i])
                    row.update({schema.PREDICTION: pred, schema.CORRECT: pred == label,
                                schema.DELTA_LINF: float(delta.abs().max()),
                                schema.DELTA_L2: float(delta.flatten().norm())})
                rows.append(row)
    return schema.typed_gallery(pd.DataFrame(rows, columns=schema.GALLERY_COLUMNS))


def counts(table: pd.DataFrame) -> pd.DataFrame:
    """Per run, each attack's ``k/n`` images still classified correctly (``n/a`` where it does not apply): the
    report's one-line reading of the gallery."""
    out = {}
    for run, rows in table.groupby(schema.RUN, sort=False):
        cells = {}
        for name, r in rows.groupby(schema.ATTACK, sort=False):
            cells[name] = "n/a" if r[schema.NOT_APPLICABLE].notna().all() else \
                f"{int(r[schema.CORRECT].astype(bool).sum())}/{len(r)}"
        out[run] = cells
    return pd.DataFrame.from_dict(out, orient="index").rename_axis(schema.RUN).reset_index()


def attack_stage_agreement(table: pd.DataFrame, results: Mapping[str, pd.DataFrame]) -> tuple[int, int]:
    """On how many (run, image, attack) of the gallery the attack stage's per-example results (``results``:
    run -> its ``attack/<run>.csv``) say the same: clean-correct for ``CLEAN``, else robust (clean-correct
    and the attack failed). Returns (agreeing, compared); images or attacks the stage lacks are skipped."""
    agree = compared = 0
    for run, rows in table.groupby(schema.RUN, sort=False):
        if run not in results:
            continue
        stage = results[run].set_index(schema.INDEX)
        clean = rows[rows[schema.ATTACK] == CLEAN].set_index(schema.INDEX)[schema.CORRECT]
        for _, r in rows[rows[schema.NOT_APPLICABLE].isna()].iterrows():
            column = schema.CLEAN if r[schema.ATTACK] == CLEAN else schema.robust(r[schema.ATTACK])
            if r[schema.INDEX] not in stage.index or column not in stage.columns:
                continue
            ours = bool(r[schema.CORRECT]) and bool(clean[r[schema.INDEX]])
            agree += int(ours == bool(stage.at[r[schema.INDEX], column]))
            compared += 1
    return agree, compared


def amplification(max_abs: float, target: float = AMPLIFY_TARGET) -> int:
    """The largest factor of 1, 2, 5, 10, 20, 50, ... with ``factor * max_abs <= target``; 1 for a
    perturbation already that large or negligible (``NEGLIGIBLE``)."""
    if max_abs <= NEGLIGIBLE or max_abs >= target:
        return 1
    factor, k = 1, 0
    while True:
        for m in (1, 2, 5):
            f = m * 10 ** k
            if f * max_abs > target:
                return factor
            factor = f
        k += 1


def perturbation_size(deltas: Sequence[torch.Tensor], q: float = AMPLIFY_QUANTILE) -> float:
    """The ``q`` quantile of the entries' sizes |x_adv - x| of ``deltas`` (0 when there are none)."""
    flat = torch.cat([d.detach().abs().flatten().float() for d in deltas]) if deltas else torch.zeros(0)
    return float(torch.quantile(flat, q)) if flat.numel() else 0.0


def _image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow takes: (H, W) for one channel, (H, W, 3) for three."""
    a = x.detach().cpu().float().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _show(ax, x: torch.Tensor) -> None:
    ax.imshow(_image(x), cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def _row_label(attack: SuiteAttack | None, dataset: str | None) -> str:
    if attack is None:
        return CLEAN
    eps = budget(attack)
    shown = format_eps(eps, dataset) if attack.name == AA_LINF else f"{eps:g}"
    return f"{TITLES.get(attack.name, attack.name)}\neps {shown}"


def gallery_figure(runs: Sequence[GalleryRun], attacks: Sequence[SuiteAttack], dataset: str | None = None) -> Figure:
    """One panel per run, side by side; in each, one row per attack (clean first) and two columns per image:
    the image with the prediction (green and a tick when it is the label, red and a cross otherwise) and
    the perturbation x_adv - x drawn as 0.5 + factor x (x_adv - x), the factor (``amplification`` of
    ``perturbation_size``) the same for an attack across runs and images and written above it. An attack that
    does not apply shows n/a; a misclassified image, which is not attacked, says so."""
    n, rows = max(len(g.index) for g in runs), 1 + len(attacks)
    factors = {a.name: amplification(perturbation_size([(g.points[a.name] - g.x)[g.attacked] for g in runs
                                                        if a.name in g.points])) for a in attacks}
    cell = 0.95
    fig = plt.figure(figsize=(len(runs) * (2 * n * cell + 1.3), rows * cell * 1.3 + 0.7), layout="constrained")
    fig.suptitle("Adversarial examples: prediction on each image (label under clean), and x_adv - x times the "
                 "factor shown (grey = 0; its largest 1% clipped)", fontsize=10)
    for sub, g in zip(fig.subfigures(1, len(runs), squeeze=False)[0], runs, strict=True):
        sub.suptitle(g.run, fontsize=11, fontweight="bold")
        axes = sub.subplots(rows, 2 * n, squeeze=False)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
        for row, attack in enumerate([None, *attacks]):
            name = CLEAN if attack is None else attack.name
            axes[row, 0].set_ylabel(_row_label(attack, dataset), fontsize=8, rotation=0, ha="right", va="center")
            for i in range(len(g.index)):
                img_ax, delta_ax = axes[row, 2 * i], axes[row, 2 * i + 1]
                if name in g.not_applicable:
                    img_ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=10, color="0.4")
                    delta_ax.text(0.5, 0.5, "needs\ncolour" if name == RECOLORADV else "", ha="center",
                                  va="center", fontsize=7, color="0.4")
                    continue
                if name not in g.predictions:
                    continue
                point = g.points.get(name, g.x)[i]
                _show(img_ax, point)
                pred, label = int(g.predictions[name][i]), int(g.y[i])
                ok = pred == label
                img_ax.set_title(f"{class_name(dataset, pred)} {'✓' if ok else '✗'}", fontsize=8,
                                 color="tab:green" if ok else "tab:red", pad=2)
                if attack is None:
                    delta_ax.text(0.5, 0.5, f"test #{g.index[i]}\nlabel\n{class_name(dataset, label)}",
                                  ha="center", va="center", fontsize=7)
                    continue
                if not bool(g.attacked[i]):
                    delta_ax.text(0.5, 0.5, "not\nattacked:\nclean\nwrong", ha="center", va="center", fontsize=7,
                                  color="0.4")
                    continue
                delta = (point - g.x[i]) * factors[name]
                _show(delta_ax, (0.5 + delta).clamp(0, 1))
                delta_ax.set_title(f"δ x{factors[name]}", fontsize=7, pad=2)
    return fig
