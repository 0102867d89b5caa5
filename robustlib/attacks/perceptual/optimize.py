"""StAdv, ReColorAdv and the JPEG attack as problems of the ascent engine
(``robustlib.attacks.ascent.maximize``) over a perturbation function's parameters.

Laidlaw et al. (2021, perceptual-advex) run these attacks through mister_ed's PGD driver: each
iterate's parameters are projected, rendered, and the summed objective (margin + lambda * smoothness
penalty) takes one Adam step (StAdv, ReColorAdv); the JPEG attack (Kang et al. 2019, advex-uar) takes
sign steps on the cross-entropy. The reference returns the LAST iterate; here every iterate is a
point of the threat set (parameters are projected before rendering), and each example keeps the
iterate with the largest Carlini-Wagner margin ``max_{j != y} z_j - z_y`` seen so far, and the first
fooling one once it is fooled (it then leaves the batch). That is at least as strong as the
reference and is labelled in the report.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustlib.attacks.ascent import Problem, StepRule, maximize
from robustlib.attacks.common import margin_loss

Render = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``render(x, theta) -> image`` in [0, 1]."""
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``objective(logits, y, theta) -> (B,)`` per-example value to MAXIMIZE."""


def margin_objective(logits: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return margin_loss(logits, y)


def ascend_params(model: nn.Module, x: torch.Tensor, y: torch.Tensor, theta0: torch.Tensor, render: Render,
                  project: Callable[[torch.Tensor], torch.Tensor], steps: int, step: StepRule,
                  objective: Objective = margin_objective) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximize ``objective(model(render(x, theta)), y, theta)`` over ``theta`` from ``theta0`` by
    ``steps`` steps of ``step``; every iterate is ``project``-ed before it is rendered. Returns
    ``(image, theta)`` per example: the first fooling iterate, else the one with the largest margin
    (the projected start counts); examples misclassified at ``x`` are returned as ``x`` with ``theta =
    0``, which every perturbation function here renders as ``x``. ``image == render(x, theta)``."""
    problem = Problem(x.detach(), lambda logits, theta, idx: objective(logits, y[idx], theta),
                      start=lambda idx, restart, previous: theta0.detach()[idx],
                      project=lambda theta, idx: project(theta), render=lambda theta, idx: render(x[idx], theta))
    result = maximize(model, problem, steps, step, keep="margin", y=y)
    return result.points, result.theta
