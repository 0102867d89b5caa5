"""Robustness curves: robust accuracy against eps, as the tidy curve table of ``robustlib.evaluation.schema``
(norm, eps, attack, robust_acc), the attack stage's Figure 2 data.

At each eps of a norm's grid the curve's attacks (``robustlib.evaluation.suite.curve_attacks``: PGD, FGSM,
optionally AutoAttack) run through ``evaluate_attacks``, every point checked to lie in its ball; the
attack stage adds the AutoAttack points of its own evaluation at the standard eps
(``add_autoattack_points``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from robustlib.evaluation import schema
from robustlib.evaluation.suite import (
    AUTOATTACK,
    CURVE_AUTOATTACK,
    CURVE_PGD,
    CURVE_PGD_NESTED,
    AttackSuite,
    CurveSettings,
    curve_attacks,
)
from robustlib.evaluation.worst_case import evaluate_attacks
from robustlib.threat import NORMS, ThreatModel


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps_grid: Sequence[float],
                     steps: int = 20, restarts: int = 10, autoattack: bool = False, with_fgsm: bool = True,
                     seed: int = 0, aa_version: str = "standard", batch_size: int = 1000) -> pd.DataFrame:
    """Robust accuracy against eps: PGD (``steps`` x ``restarts``, step 2.5 eps / steps), optionally FGSM
    and AutoAttack, as a tidy table with columns norm, eps, attack, robust_acc (attack is ``pgd``,
    ``fgsm``, ``autoattack`` or ``pgd_nested``: ``suite.CURVE_*``). Every point is checked to lie in its
    ball. ``pgd_nested`` is the per-example worst case of PGD over every eps' <= eps of the grid (a point
    of a smaller ball lies in the larger one): the strongest PGD number at each eps, non-increasing by
    construction. ``pgd`` is PGD at that eps alone; where it rises with eps the attack lost strength at
    the larger radius (gradient masking), which the attack stage records as a flag."""
    eps_grid = sorted(float(e) for e in eps_grid)
    for e in eps_grid:
        ThreatModel(norm, e)  # validates norm and eps before any compute
    rows = []
    broken = torch.zeros(x.shape[0], dtype=torch.bool)  # broken by PGD at some eps' <= eps (the balls are nested)
    for eps in tqdm(eps_grid, desc=f"{norm} curve", leave=False):
        threat = ThreatModel(norm, eps)
        attacks = curve_attacks(threat, steps, restarts, seed, batch_size, x.device, with_fgsm,
                                aa_version if autoattack else None)
        table = evaluate_attacks(model, x, y, attacks, threats={k: threat for k in attacks})
        rows += [schema.curve_row(norm, eps, name, float(table[schema.robust(name)].mean())) for name in attacks]
        broken |= ~schema.flags(table, schema.robust(CURVE_PGD))
        rows.append(schema.curve_row(norm, eps, CURVE_PGD_NESTED, float((~broken).float().mean())))
    return schema.curve_table(rows)


def robustness_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, curve: CurveSettings) -> pd.DataFrame:
    """``robustness_curve`` (PGD and FGSM) for each norm's eps grid of ``curve`` on the first ``curve.n``
    examples, as one tidy table."""
    x, y = x[:curve.n], y[:curve.n]
    return pd.concat([robustness_curve(model, x, y, norm, grid, steps=curve.steps, restarts=curve.restarts,
                                       seed=curve.seed, batch_size=curve.batch_size)
                      for norm, grid in curve.eps_grids.items()], ignore_index=True)


def add_autoattack_points(curve: pd.DataFrame, table: pd.DataFrame, suite: AttackSuite) -> None:
    """Append (in place) the suite's AutoAttack at each norm's standard eps, on all of ``table``'s
    examples (its per-example results), to ``curve`` as attack ``autoattack``."""
    for norm in NORMS:
        aa = suite[AUTOATTACK[norm]]
        curve.loc[len(curve)] = [norm, aa.threat.eps, CURVE_AUTOATTACK, float(table[schema.robust(aa.name)].mean())]
