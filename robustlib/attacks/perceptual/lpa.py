"""The neural perceptual threat model (NPTM) of Laidlaw, Singla & Feizi (ICLR 2021), ``d(x, x') <=
eps`` with ``d`` an LPIPS distance, and its two attacks, LPA (Lagrangian Perceptual Attack, their
Alg. 2) and PPGD (Perceptual Projected Gradient Descent, their Alg. 1), as in perceptual-advex
(``LagrangePerceptualAttack``, ``PerceptualPGDAttack``, ``NewtonsPerceptualProjection``).

The LPIPS network is FIXED and the same for every attacked model: an ``alexnet_cifar`` trained by the
pipeline's ``lpips`` stage on the dataset's training split (perceptual-advex downloads its
checkpoint; nothing can be downloaded here). ``d(x, x') = ||phi(x) - phi(x')||_2`` where ``phi``
stacks the network's convolutional ReLU outputs, each normalized to unit L2 norm over channels at
every position and divided by ``sqrt(H_l W_l)`` (perceptual-advex's ``normalize_flatten_features``:
uniform layer weights, no learned linear head; the square root of their unweighted LPIPS).

Both attacks maximize the margin ``min(max_{j != y} z_j - z_y, kappa)`` with kappa 1.

* LPA: ``delta`` starts at ``N(0, 0.01^2)``; 5 rounds ("binary steps") of 40 steps; in each step,
  for examples not yet fooled inside the bound, minimize ``-margin + lambda * relu(d - eps)`` by a
  normalized-gradient step of LPIPS length ``0.5 * 0.1^(t / 40)`` (the length of the gradient
  direction measured by a finite difference with h 0.1); an example fooled within the bound is
  frozen; after each round lambda (from 0.01) is multiplied by 10 where the bound is violated;
  finally a Newton projection onto ``d <= eps``.
* PPGD: ``x + N(0, 0.01^2)``, then 40 steps, each along ``(J^T J)^{-1} grad`` (J the LPIPS
  features' Jacobian; 5 conjugate-gradient iterations with finite-difference products, h 1e-3) of
  linearized LPIPS length ``2 eps / 40``, followed by the Newton projection.
* Newton projection: up to 10 steps ``x' -= 1.1 (d - eps + 0.1) grad d / ||grad d||^2`` on examples
  outside the bound, then bisection along the segment from ``x`` for any still outside.

Both run on the ascent engine (``robustlib.attacks.ascent.maximize``): LPA's rounds are restarts that
continue from the previous round's last iterate, its final projection is the engine's ``finish``;
PPGD's projection is the engine's ``project``.

Departures (labelled): starting points are clipped to [0, 1], and PPGD's start is projected (a no-op
unless the 0.01 noise already leaves the ball); the bisection returns its last point that satisfies
the bound (the reference returns its last evaluated one, which may violate it); the reference's
accumulation of gradients across Newton steps is not reproduced; LPA's lambda grows where a round's
last iterate violates the bound; every evaluated iterate that lies inside the bound is a candidate,
each example keeps the first that fools the model (it then stops), else the one with the largest
margin (the reference returns the final point only). Every returned point satisfies ``d <= eps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustlib.attacks.ascent import Problem, maximize
from robustlib.attacks.common import (
    AttackCheckError,
    AttackResult,
    NotApplicable,
    check_count,
    check_inputs,
    eval_mode,
    margin_loss,
)


def lpips_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``phi(x)`` (B, D): the convolutional ReLU outputs of ``net`` (a ``SequentialReLUNet`` such as
    ``alexnet_cifar``), channel-normalized (eps 1e-10) and scaled by ``1 / sqrt(H W)``, concatenated.
    Only the layers up to the last convolutional ReLU are evaluated."""
    layers = getattr(net, "layers", None)
    if not isinstance(layers, nn.Sequential) or not hasattr(net, "normalize"):
        raise NotApplicable("the LPIPS network must be a robustlib SequentialReLUNet (e.g. alexnet_cifar)")
    h = net.normalize(x)
    feats = []
    for layer in layers:
        if isinstance(layer, nn.Flatten):
            break
        h = layer(h)
        if isinstance(layer, nn.ReLU) and h.dim() == 4:
            norm = h.pow(2).sum(1, keepdim=True).sqrt()
            feats.append((h / ((norm + 1e-10) * (h.shape[2] * h.shape[3]) ** 0.5)).flatten(1))
    if not feats:
        raise NotApplicable("the LPIPS network has no convolutional ReLU layers")
    return torch.cat(feats, 1)


def lpips_distance(net: nn.Module, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Per-example LPIPS distance ``||phi(x) - phi(x2)||_2`` under the LPIPS network ``net``."""
    return (lpips_features(net, x) - lpips_features(net, x2)).norm(dim=1)


def _view(x: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (x.dim() - 1)


def _kappa_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    return margin_loss(logits, y).clamp(max=kappa)


def _bisect(net: nn.Module, x: torch.Tensor, phi_x: torch.Tensor, x_adv: torch.Tensor, eps: float,
            iters: int = 20) -> torch.Tensor:
    """Per example, the point ``x + t (x_adv - x)`` with the largest ``t`` in [0, 1] found by
    bisection such that ``d <= eps`` (``t = 0``, i.e. ``x`` itself, always qualifies)."""
    lo = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    hi = torch.ones_like(lo)
    point = lambda t: x + t.view(_view(x)) * (x_adv - x)  # noqa: E731
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = (lpips_features(net, point(mid)) - phi_x).norm(dim=1) <= eps
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return point(lo)


def newton_project(net: nn.Module, x: torch.Tensor, phi_x: torch.Tensor, x_adv: torch.Tensor, eps: float,
                   overshoot: float = 0.1, max_iterations: int = 10) -> torch.Tensor:
    """perceptual-advex's ``NewtonsPerceptualProjection`` (see module docstring), with a sound
    bisection fallback: every returned point has ``d(x, .) <= eps`` (float32, as computed here)."""
    x_adv = x_adv.detach().clone()
    needs = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(max_iterations):
        if not bool(needs.any()):
            break
        xa = x_adv[needs].requires_grad_(True)
        d = (lpips_features(net, xa) - phi_x[needs]).norm(dim=1)
        grad = torch.autograd.grad(d.sum(), xa)[0]
        with torch.no_grad():
            s = (d - eps).clamp_min(0)
            s = torch.where(s > 0, s + overshoot, s)
            g2 = grad.flatten(1).pow(2).sum(1).clamp_min(1e-20)
            x_adv[needs] = (xa - (s * (1 + overshoot) / g2).view(_view(x)) * grad).clamp(0, 1)
            needs[needs.clone()] = s > 0
    with torch.no_grad():
        outside = (lpips_features(net, x_adv) - phi_x).norm(dim=1) > eps
        if bool(outside.any()):
            x_adv[outside] = _bisect(net, x[outside], phi_x[outside], x_adv[outside], eps)
    return x_adv


def _inside(net: nn.Module, phi_x: torch.Tensor, eps: float):
    """``feasible(image, idx)``: inside the LPIPS ball of radius ``eps`` around ``x[idx]`` and in [0, 1]."""
    def feasible(img: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            inside = (lpips_features(net, img) - phi_x[idx]).norm(dim=1) <= eps
        return inside & ((img >= 0) & (img <= 1)).flatten(1).all(1)
    return feasible


def _check(net: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, eps: float, name: str) -> torch.Tensor:
    with torch.no_grad():
        d = lpips_distance(net, x, x_adv)
    if not bool((d <= eps * (1 + 1e-5)).all()):
        raise AttackCheckError("threat_set", f"{name} returned a point with LPIPS distance {float(d.max()):.4g} "
                               f"> {eps}")
    return x_adv


def _prepare(model, lpips_net, x, y, eps, name):
    check_inputs(x, y)
    if lpips_net is None:
        raise NotApplicable(f"{name} needs the fixed LPIPS network (the pipeline's lpips stage trains it)")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    lpips_net.eval()
    with torch.no_grad():
        phi_x = lpips_features(lpips_net, x)
    return x.detach(), phi_x


@dataclass(frozen=True)
class LPAStep:
    """LPA's step on ``x'`` (perceptual-advex ``LagrangePerceptualAttack``): along the normalized
    gradient ``g`` of the Lagrangian, of LPIPS length ``eps * 0.1^(t / steps)``, the length of ``g``
    measured by a finite difference with ``h``."""

    net: nn.Module
    eps: float
    steps: int
    h: float

    def init(self, theta: torch.Tensor) -> dict:
        return {}

    @torch.no_grad()
    def __call__(self, theta: torch.Tensor, grad: torch.Tensor, state: dict, t: int) -> torch.Tensor:
        g = grad / (grad.flatten(1).norm(dim=1).view(_view(grad)) + 1e-8)
        length = (lpips_features(self.net, theta + self.h * g) - lpips_features(self.net, theta)).norm(dim=1) / self.h
        size = self.eps * 0.1 ** (t / self.steps)  # the reference's step: the bound, decayed tenfold per round
        return theta + g * (size / (length + 1e-8)).view(_view(grad))


def lpa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lpips_net: nn.Module | None = None, eps: float = 0.5,
        steps: int = 40, rounds: int = 5, lam0: float = 0.01, h: float = 0.1, kappa: float = 1.0,
        generator: torch.Generator | None = None) -> AttackResult:
    """LPA in the LPIPS ball of radius ``eps`` (see module docstring); ``steps`` per round. Each round is
    a restart of the ascent engine that continues from the previous round's last iterate."""
    x, phi_x = _prepare(model, lpips_net, x, y, eps, "LPA")
    steps, rounds = check_count("steps", steps, 1), check_count("rounds", rounds, 1)
    noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else None).to(x)
    first = (x + 0.01 * noise).clamp(0, 1)
    lam = torch.full((x.shape[0],), float(lam0), device=x.device, dtype=x.dtype)
    dist = torch.zeros_like(lam)  # each example's LPIPS distance at its last evaluated iterate

    def objective(logits: torch.Tensor, xa: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        d = (lpips_features(lpips_net, xa) - phi_x[idx]).norm(dim=1)
        dist[idx] = d.detach()
        return _kappa_margin(logits, y[idx], kappa) - lam[idx] * (d - eps).clamp_min(0)

    def start(idx: torch.Tensor, restart: int, previous: torch.Tensor | None) -> torch.Tensor:
        if previous is None:
            return first[idx]
        lam[idx] = torch.where(dist[idx] >= eps, lam[idx] * 10, lam[idx])  # the penalty grows where violated
        return previous

    problem = Problem(x, objective, start, project=lambda xa, idx: xa.clamp(0, 1),
                      feasible=lambda img, idx: dist[idx] <= eps,  # the objective has just measured img
                      finish=lambda xa, idx: newton_project(lpips_net, x[idx], phi_x[idx], xa, eps))
    with eval_mode(model):
        best = maximize(model, problem, steps, LPAStep(lpips_net, eps, steps, h), restarts=rounds, keep="margin", y=y)
    return AttackResult(_check(lpips_net, x, best.points, eps, "LPA"))


def _features_jvp(net: nn.Module, xa: torch.Tensor, phi: torch.Tensor, p: torch.Tensor, h: float) -> torch.Tensor:
    with torch.no_grad():
        return (lpips_features(net, xa + h * p) - phi) / h


def _gauss_newton_product(net: nn.Module, xa: torch.Tensor, xr: torch.Tensor, phi_r: torch.Tensor, phi0: torch.Tensor,
                          p: torch.Tensor, h: float) -> torch.Tensor:
    """``J^T J p`` with ``J p`` by a finite difference and ``J^T`` by autograd through ``phi_r = phi(xr)``."""
    jp = _features_jvp(net, xa, phi0, p, h)
    return torch.autograd.grad(phi_r, xr, grad_outputs=jp, retain_graph=True)[0]


@dataclass(frozen=True)
class PPGDStep:
    """PPGD's step (perceptual-advex ``PerceptualPGDAttack``): along ``(J^T J)^{-1} grad`` (``J`` the
    LPIPS features' Jacobian at ``x'``; ``cg_iterations`` conjugate-gradient iterations with
    finite-difference products, ``h``) of linearized LPIPS length ``size``; examples whose gradient
    norm is below 1e-4 do not move."""

    net: nn.Module
    size: float
    cg_iterations: int
    h: float

    def init(self, theta: torch.Tensor) -> dict:
        return {}

    def __call__(self, theta: torch.Tensor, grad: torch.Tensor, state: dict, t: int) -> torch.Tensor:
        view = _view(theta)
        live = grad.flatten(1).norm(dim=1) >= 1e-4
        with torch.enable_grad():
            xr = theta.clone().requires_grad_(True)
            phi_r = lpips_features(self.net, xr)
        phi0 = phi_r.detach()
        v, r = torch.zeros_like(grad), grad.clone()  # conjugate gradients on (J^T J) v = grad, from v = 0
        p, rr = r.clone(), r.flatten(1).pow(2).sum(1)
        for it in range(self.cg_iterations):
            ap = _gauss_newton_product(self.net, theta, xr, phi_r, phi0, p, self.h)
            alpha = rr / (p * ap).flatten(1).sum(1).clamp_min(1e-20)
            v = v + alpha.view(view) * p
            r = r - alpha.view(view) * ap
            rr_new = r.flatten(1).pow(2).sum(1)
            if it > 0 and float(rr_new.max()) < 0.1:
                break
            p = r + (rr_new / rr.clamp_min(1e-20)).view(view) * p
            rr = rr_new
        with torch.no_grad():
            length = _features_jvp(self.net, theta, phi0, v, self.h).norm(dim=1)
            lam = torch.where(live, self.size / length.clamp_min(1e-20), torch.zeros_like(length))
            return (theta + lam.view(view) * v).clamp(0, 1)


def ppgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lpips_net: nn.Module | None = None, eps: float = 0.5,
         steps: int = 40, cg_iterations: int = 5, h: float = 1e-3, kappa: float = 1.0,
         generator: torch.Generator | None = None) -> AttackResult:
    """PPGD in the LPIPS ball of radius ``eps`` (see module docstring)."""
    x, phi_x = _prepare(model, lpips_net, x, y, eps, "PPGD")
    steps, cg_iterations = check_count("steps", steps, 1), check_count("cg_iterations", cg_iterations, 1)
    noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else None).to(x)
    first = (x + 0.01 * noise).clamp(0, 1)
    problem = Problem(x, lambda logits, xa, idx: _kappa_margin(logits, y[idx], kappa),
                      start=lambda idx, restart, previous: first[idx],
                      project=lambda xa, idx: newton_project(lpips_net, x[idx], phi_x[idx], xa, eps),
                      feasible=_inside(lpips_net, phi_x, eps))
    with eval_mode(model):
        best = maximize(model, problem, steps, PPGDStep(lpips_net, 2 * eps / steps, cg_iterations, h),
                        keep="margin", y=y)
    return AttackResult(_check(lpips_net, x, best.points, eps, "PPGD"))
