"""LPA: Lagrangian Perceptual Attack (Laidlaw, Singla & Feizi, ICLR 2021), the neural perceptual
threat model (NPTM) ``d(x, x') <= eps`` with ``d`` an LPIPS distance.

LPIPS (Zhang et al. 2018) compares unit-normalized deep features: ``d(x, x') = ||phi(x) - phi(x')||_2``
where ``phi`` stacks, for every layer ``l``, the activations normalized to unit L2 norm across channels
at each spatial position and scaled by ``1 / sqrt(H_l W_l)`` (uniform layer weights, no learned
linear head). The paper uses an AlexNet as the LPIPS network; AlexNet weights cannot be downloaded
here, so the LPIPS network is the ATTACKED MODEL's own ReLU activations (``model(x,
return_preacts=True)``), the "self-bounded" variant of Laidlaw et al. A model that cannot return its
pre-activations raises ``NotApplicable``.

Algorithm (the paper's Alg. 2): maximize the margin loss minus ``lambda * max(0, d - eps)`` by
normalized-gradient steps whose size in LPIPS units decays from ``eps`` to ``eps / 10`` (the
step's perceptual length is measured by a finite difference), raising ``lambda`` tenfold after each
round in which the bound is violated; finally project onto ``d <= eps`` by bisection along the
segment from ``x`` (the paper's bisection projection), so every returned point obeys the bound.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlib.attacks.common import NotApplicable, check_count, check_inputs, eval_mode, margin_loss


def lpips_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, phi(x))``: phi is (B, D), the normalized, scaled ReLU activations of every layer."""
    try:
        logits, preacts = model(x, return_preacts=True)
    except TypeError as err:
        raise NotApplicable("LPA uses the model's own activations as the LPIPS network and needs "
                            "model(x, return_preacts=True)") from err
    feats = []
    for z in preacts:
        a = torch.relu(z)
        a = a / (a.pow(2).sum(1, keepdim=True) + 1e-20).sqrt()
        spatial = a[0, 0].numel()
        feats.append(a.flatten(1) / spatial ** 0.5)
    if not feats:
        raise NotApplicable("the model has no ReLU layers to serve as LPIPS features")
    return logits, torch.cat(feats, 1)


def lpips_distance(model: nn.Module, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Per-example LPIPS distance between ``x`` and ``x2`` under ``model``'s features."""
    return (lpips_features(model, x)[1] - lpips_features(model, x2)[1]).norm(dim=1)


def _bisect(model: nn.Module, x: torch.Tensor, phi_x: torch.Tensor, x_adv: torch.Tensor, eps: float,
            iters: int = 20) -> torch.Tensor:
    """Largest ``t`` in [0, 1] found by bisection with ``d(x, x + t (x_adv - x)) <= eps``; returns that point."""
    lo = torch.zeros(x.shape[0], device=x.device)
    hi = torch.ones(x.shape[0], device=x.device)
    view = (-1,) + (1,) * (x.dim() - 1)
    point = lambda t: x + t.view(view) * (x_adv - x)  # noqa: E731
    inside = (lpips_features(model, point(hi))[1] - phi_x).norm(dim=1) <= eps
    lo = torch.where(inside, hi, lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = (lpips_features(model, point(mid))[1] - phi_x).norm(dim=1) <= eps
        lo = torch.where(ok & ~inside, mid, lo)
        hi = torch.where(ok | inside, hi, mid)
    return point(lo)


def lpa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.5, steps: int = 40,
        rounds: int = 5, lam0: float = 0.01, h: float = 0.1, generator: torch.Generator | None = None):
    """LPA in the LPIPS ball of radius ``eps`` (see module docstring); ``steps`` per ``rounds``."""
    check_inputs(x, y)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    steps = check_count("steps", steps, 1)
    rounds = check_count("rounds", rounds, 1)
    x = x.detach()
    view = (-1,) + (1,) * (x.dim() - 1)
    with eval_mode(model):
        with torch.no_grad():
            phi_x = lpips_features(model, x)[1]
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = (x + 0.01 * noise).clamp(0, 1)
        lam = torch.full((x.shape[0],), lam0, device=x.device)
        for _ in range(rounds):
            for t in range(steps):
                x_adv.requires_grad_(True)
                logits, phi = lpips_features(model, x_adv)
                dist = (phi - phi_x).norm(dim=1)
                obj = margin_loss(logits, y) - lam * (dist - eps).clamp_min(0)
                grad = torch.autograd.grad(obj.sum(), x_adv)[0]
                x_adv = x_adv.detach()
                direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
                with torch.no_grad():
                    eta = eps * 0.1 ** (t / steps)
                    phi_now = lpips_features(model, x_adv)[1]
                    m = (lpips_features(model, x_adv + h * direction)[1] - phi_now).norm(dim=1) / h
                    x_adv = (x_adv + (eta / m.clamp_min(1e-12)).view(view) * direction).clamp(0, 1)
            with torch.no_grad():
                violated = (lpips_features(model, x_adv)[1] - phi_x).norm(dim=1) > eps
            lam = torch.where(violated, lam * 10, lam)
        with torch.no_grad():
            x_adv = _bisect(model, x, phi_x, x_adv, eps).clamp(0, 1)
    return x_adv.detach()
