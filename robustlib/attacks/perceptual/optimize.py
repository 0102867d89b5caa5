"""Projected sign-gradient ascent over the parameters of a perturbation function: the loop shared by
StAdv, ReColorAdv and the JPEG attack. Per example it keeps the best point (largest margin loss;
a misclassified point has positive margin, so once fooled the example keeps a fooling point)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustlib.attacks.common import margin_loss


def ascend_params(model: nn.Module, x: torch.Tensor, y: torch.Tensor, theta0: torch.Tensor,
                  render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  project: Callable[[torch.Tensor], torch.Tensor], steps: int, step_size: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximize the margin loss of ``model(render(x, theta))`` over ``theta`` by ``steps`` sign steps
    of ``step_size``, each followed by ``project``. Returns ``(best_image, best_theta)`` per example;
    ``best_image == render(x, best_theta)`` always holds."""
    theta = project(theta0.detach())
    best_img = render(x, theta).detach()
    best_theta = theta.clone()
    best = torch.full((x.shape[0],), float("-inf"), device=x.device)
    view = (-1,) + (1,) * (theta.dim() - 1)
    for t in range(steps + 1):
        need_grad = t < steps
        with torch.set_grad_enabled(need_grad):
            if need_grad:
                theta.requires_grad_(True)
            img = render(x, theta)
            loss = margin_loss(model(img), y)
            grad = torch.autograd.grad(loss.sum(), theta)[0] if need_grad else None
        loss, img, theta = loss.detach(), img.detach(), theta.detach()
        better = loss > best
        best = torch.where(better, loss, best)
        best_img = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), img, best_img)
        best_theta = torch.where(better.view(view), theta, best_theta)
        if need_grad:
            theta = project(theta + step_size * grad.sign())
    return best_img, best_theta
