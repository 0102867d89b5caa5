"""Gradient attacks in an L-inf or L2 ball: FGSM, PGD with restarts, and a transfer (black-box) attack.

PGD (Madry et al. 2018) is the hot loop of the attack stage. Per example it keeps the MOST adversarial
point seen over all steps and restarts: the first misclassified point ends the example at once; while
the example is still classified correctly, the point of highest cross-entropy is kept. Examples that
are misclassified (clean, or by an earlier step or restart) get no further steps: the active batch
shrinks as the attack goes. Every returned point lies in the ball intersected with [0, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.attacks.common import check_count, check_inputs, chunks, eval_mode
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)

Trace = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``trace(restart, step, idx, x_iterate, loss)``: called at every evaluated iterate (tests)."""


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Fast gradient (sign) method (Goodfellow et al. 2015): one steepest-ascent step of length ``eps``
    on the cross-entropy from the clean point, ``x + eps * sign(grad)`` for L-inf and
    ``x + eps * grad / ||grad||_2`` for L2, then clipped to [0, 1]."""
    threat = ThreatModel(norm, eps)
    check_inputs(x, y)
    x = x.detach()
    with eval_mode(model), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    return threat.project(x + threat.eps * threat.steepest_ascent(grad), x).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
        steps: int = 20, restarts: int = 1, step_size: float | None = None,
        generator: torch.Generator | None = None, *, random_start: bool = True, batch_size: int = 1000,
        trace: Trace | None = None) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy (Madry et al. 2018) with random starts.

    ``steps`` sign (L-inf) or normalized (L2) steps of ``step_size`` (default 2.5 * eps / steps) from a
    uniformly random point of the ball, ``restarts`` times. Returns, per example, the most
    adversarial point found (see the module docstring); examples misclassified on the clean input
    are returned unchanged. The model runs in eval mode (restored afterwards). ``batch_size`` bounds
    memory; ``random_start=False`` starts every restart at the clean point; ``trace`` is a test hook.
    """
    threat = ThreatModel(norm, eps)
    check_inputs(x, y)
    steps = check_count("steps", steps, 0)
    restarts = check_count("restarts", restarts, 1)
    batch_size = check_count("batch_size", batch_size, 1)
    step = threat.default_step_size(steps) if step_size is None else float(step_size)
    if not step >= 0:
        raise ValueError(f"step_size must be >= 0, got {step_size!r}")
    x = x.detach()
    with eval_mode(model):
        out = [_pgd(model, x[s], y[s], threat, steps, restarts, step, generator, True, trace, s.start, random_start)
               for s in chunks(x.shape[0], batch_size)]
    return torch.cat(out) if out else x.clone()


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int,
         restarts: int, step: float, generator: torch.Generator | None, early_stop: bool,
         trace: Trace | None, offset: int = 0, random_start: bool = True) -> torch.Tensor:
    """PGD on one batch. With ``early_stop`` a misclassified point ends its example; without it (the
    transfer attack) the highest-loss point is kept regardless of the prediction."""
    best = x.clone()
    if early_stop:
        with torch.no_grad():
            todo = (model(x).argmax(1) == y).nonzero().squeeze(1)
    else:
        todo = torch.arange(x.shape[0], device=x.device)
    if threat.eps == 0:
        return best
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    for r in range(restarts):
        idx = todo
        if idx.numel() == 0:
            break
        x0, ya = x[idx], y[idx]
        xa = threat.random_start(x0, generator) if random_start else x0.clone()
        for t in range(steps + 1):
            need_grad = t < steps
            with torch.set_grad_enabled(need_grad):
                if need_grad:
                    xa.requires_grad_(True)
                logits = model(xa)
                loss = F.cross_entropy(logits, ya, reduction="none")
                grad = torch.autograd.grad(loss.sum(), xa)[0] if need_grad else None
            xa, loss = xa.detach(), loss.detach()
            if trace is not None:
                trace(r, t, idx + offset, xa, loss)
            if early_stop:
                fooled = logits.detach().argmax(1) != ya
                better = ~fooled & (loss > best_loss[idx])
            else:
                fooled, better = None, loss > best_loss[idx]
            if bool(better.any()):
                best[idx[better]] = xa[better]
                best_loss[idx[better]] = loss[better]
            if fooled is not None and bool(fooled.any()):
                best[idx[fooled]] = xa[fooled]
                best_loss[idx[fooled]] = float("inf")
                keep = ~fooled
                idx, x0, ya, xa = idx[keep], x0[keep], ya[keep], xa[keep]
                grad = grad[keep] if grad is not None else None
                if idx.numel() == 0:
                    break
            if need_grad:
                xa = threat.project(xa + step * threat.steepest_ascent(grad), x0)
        if early_stop:
            todo = todo[best_loss[todo] != float("inf")]  # fooled examples are done
    return best


def transfer(source_model: nn.Module, target_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             eps: float, norm: str = "linf", steps: int = 20, restarts: int = 1,
             step_size: float | None = None, generator: torch.Generator | None = None, *,
             batch_size: int = 1000) -> torch.Tensor:
    """Transfer (black-box) attack (Papernot et al. 2017): PGD crafted on ``source_model`` only, keeping
    per example the point of highest source cross-entropy over all steps and restarts (no early stop,
    so points go deep past the source's boundary). The target is never queried while crafting;
    evaluate the returned points on ``target_model`` (e.g. ``robustness.evaluate_attacks``).
    ``target_model`` is used only to check that both models agree on the number of classes."""
    threat = ThreatModel(norm, eps)
    check_inputs(x, y)
    steps = check_count("steps", steps, 0)
    restarts = check_count("restarts", restarts, 1)
    step = threat.default_step_size(steps) if step_size is None else float(step_size)
    x = x.detach()
    with eval_mode(source_model), eval_mode(target_model), torch.no_grad():
        k_src, k_tgt = source_model(x[:1]).shape[-1], target_model(x[:1]).shape[-1]
    if k_src != k_tgt:
        raise ValueError(f"source model has {k_src} classes, target model {k_tgt}")
    with eval_mode(source_model):
        out = [_pgd(source_model, x[s], y[s], threat, steps, restarts, step, generator, False, None)
               for s in chunks(x.shape[0], batch_size)]
    return torch.cat(out) if out else x.clone()
