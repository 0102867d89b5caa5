"""The ascent over a perturbation function's parameters shared by StAdv, ReColorAdv and the JPEG
attack: render -> loss -> step -> project, with best-so-far per example.

Laidlaw et al. (2021, perceptual-advex) run these attacks through mister_ed's PGD driver: each
iterate's parameters are projected, rendered, and the summed objective (margin + lambda * smoothness
penalty) takes one Adam step (StAdv, ReColorAdv); the JPEG attack (Kang et al. 2019, advex-uar) takes
sign steps on the cross-entropy. The reference returns the LAST iterate; here every iterate is a
point of the threat set (parameters are projected before rendering), and each example keeps the
iterate with the largest Carlini-Wagner margin ``max_{j != y} z_j - z_y`` seen so far, a fooling one
once it is fooled. That is strictly at least as strong as the reference and is labelled in the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from robustlib.attacks.common import margin_loss

Render = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``render(x, theta) -> image`` in [0, 1]."""
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``objective(logits, y, theta) -> (B,)`` per-example value to MAXIMIZE."""


@dataclass(frozen=True)
class SignStep:
    """``theta += size * sign(grad)`` (the JPEG attack's L-inf steps)."""

    size: float

    def init(self, theta: torch.Tensor) -> dict:
        return {}

    def __call__(self, theta: torch.Tensor, grad: torch.Tensor, state: dict) -> torch.Tensor:
        return theta + self.size * grad.sign()


@dataclass(frozen=True)
class AdamStep:
    """One ascent step of Adam (Kingma & Ba 2015, Alg. 1; torch.optim.Adam's defaults) on ``theta``.
    Adam is elementwise, so each example's parameters move independently of the others'."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init(self, theta: torch.Tensor) -> dict:
        return {"t": 0, "m": torch.zeros_like(theta), "v": torch.zeros_like(theta)}

    def __call__(self, theta: torch.Tensor, grad: torch.Tensor, state: dict) -> torch.Tensor:
        b1, b2 = self.betas
        state["t"] += 1
        t = state["t"]
        state["m"].mul_(b1).add_(grad, alpha=1 - b1)
        state["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (state["v"] / (1 - b2 ** t)).sqrt().add_(self.eps)
        return theta + (self.lr / (1 - b1 ** t)) * state["m"] / denom


def margin_objective(logits: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return margin_loss(logits, y)


def ascend_params(model: nn.Module, x: torch.Tensor, y: torch.Tensor, theta0: torch.Tensor, render: Render,
                  project: Callable[[torch.Tensor], torch.Tensor], steps: int, step: SignStep | AdamStep,
                  objective: Objective = margin_objective) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximize ``objective(model(render(x, theta)), y, theta)`` over ``theta`` by ``steps`` steps of
    ``step``; every iterate is ``project``-ed before it is rendered. Returns ``(best_image,
    best_theta)``, per example the iterate with the largest margin ``max_{j != y} z_j - z_y`` (the
    projected start counts), and ``best_image == render(x, best_theta)`` always holds."""
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    theta = project(theta0.detach())
    state = step.init(theta)
    best = torch.full((x.shape[0],), -math.inf, device=x.device)
    best_img = torch.empty_like(x)
    best_theta = torch.empty_like(theta)
    img_view, theta_view = (-1,) + (1,) * (x.dim() - 1), (-1,) + (1,) * (theta.dim() - 1)
    for t in range(steps + 1):
        need_grad = t < steps
        with torch.set_grad_enabled(need_grad):
            if need_grad:
                theta.requires_grad_(True)
            img = render(x, theta)
            logits = model(img)
            if need_grad:
                grad = torch.autograd.grad(objective(logits, y, theta).sum(), theta)[0]
        with torch.no_grad():
            margin = margin_loss(logits.detach(), y)
            better = (margin > best) | (t == 0)  # the projected start always counts
            best = torch.where(better, margin, best)
            best_img = torch.where(better.view(img_view), img.detach(), best_img)
            best_theta = torch.where(better.view(theta_view), theta.detach(), best_theta)
            if need_grad:
                theta = project(step(theta.detach(), grad, state))
    return best_img, best_theta
