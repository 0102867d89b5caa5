"""Projected steepest ascent on an arbitrary per-example loss: the inner maximization shared by
training terms (PGD-AT, TRADES, ARR, ...) and the evaluation attacks (``robustlib.attacks``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustlib.threat import ThreatModel

LossFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps logits ``(B, C)`` to a per-example loss ``(B,)`` to be maximized."""


def ascend(model: nn.Module, x: torch.Tensor, loss_fn: LossFn, threat: ThreatModel, steps: int,
           step_size: float | None = None, random_start: bool = True,
           generator: torch.Generator | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
    """Maximize ``loss_fn(model(x'))`` over the threat ball around ``x`` by ``steps`` projected
    steepest-ascent steps (Madry et al. 2018; sign steps for L-inf, normalized steps for L2).

    The first iterate is ``start`` projected onto the ball if given (e.g. TRADES' x + 0.001 N(0, I)),
    else a uniformly random point of the ball (``random_start``) or ``x`` itself. Returns the last
    iterate, detached, inside the ball and in [0, 1]. ``steps=0`` returns the start point. The
    model's parameters receive no gradient.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    step = threat.default_step_size(steps) if step_size is None else float(step_size)
    x = x.detach()
    if start is not None:
        if start.shape != x.shape:
            raise ValueError(f"start has shape {tuple(start.shape)}, x has {tuple(x.shape)}")
        x_adv = threat.project(start.detach(), x)
    else:
        x_adv = threat.random_start(x, generator) if random_start else x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv)).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = threat.project(x_adv.detach() + step * threat.steepest_ascent(grad), x)
    return x_adv.detach()
