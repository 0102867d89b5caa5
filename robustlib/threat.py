"""One definition of the threat model, shared by attacks and adversarial training terms.

A threat model is a norm ball of radius ``eps`` around a clean input, intersected with the image
domain [0, 1]. Attacks (``robustlib.attacks``) and training terms that need perturbed or adversarial
points (stability, TRADES, PGD-AT, ...) use these functions, so training and evaluation cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NORMS = ("linf", "l2")


def _draw(fn, shape, generator: torch.Generator | None, like: torch.Tensor, **kw) -> torch.Tensor:
    """Draw with ``fn`` on the generator's device (CPU generators are the norm, also for CUDA models,
    so that draws do not depend on the device), then move to ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return fn(shape, generator=generator, device=device, **kw).to(device=like.device, dtype=like.dtype)


def steepest_ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm steepest-ascent direction of ``norm`` per example: ``sign(grad)`` for L-inf,
    ``grad / ||grad||_2`` for L2."""
    if norm == "linf":
        return grad.sign()
    if norm != "l2":
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return grad / n


@dataclass(frozen=True)
class ThreatModel:
    """An ``norm`` ball of radius ``eps`` intersected with [0, 1].

    ``norm`` is ``"linf"`` or ``"l2"``; ``eps`` must be finite and non-negative.
    """

    norm: str
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")

    def with_eps(self, eps: float) -> ThreatModel:
        return ThreatModel(self.norm, float(eps))

    # -- geometry -------------------------------------------------------------------------------
    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-example norm of ``delta`` (shape ``(B,)``)."""
        flat = delta.flatten(1)
        return flat.abs().amax(1) if self.norm == "linf" else flat.norm(dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project ``x_adv`` onto the ball around ``x``, then clip to [0, 1].

        For L-inf the result lies in the intersection exactly; for L2 the clip can only shrink the
        perturbation, so the result stays in the ball.
        """
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            factor = (self.eps / n).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
            delta = delta * factor
        return (x + delta).clamp(0.0, 1.0)

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A uniformly random point of the ball around ``x`` (clipped to [0, 1])."""
        if self.norm == "linf":
            delta = (2 * _draw(torch.rand, x.shape, generator, x) - 1) * self.eps
        else:
            g = _draw(torch.randn, x.shape, generator, x)
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            d = x[0].numel()
            r = _draw(torch.rand, (x.shape[0],), generator, x) ** (1.0 / d)
            delta = g * (self.eps * r).view(-1, *([1] * (x.dim() - 1)))
        return (x + delta).clamp(0.0, 1.0)

    def random_corner(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random corner ``rho`` of the eps-cube (L-inf): each coordinate +eps or -eps.

        This is the perturbation of the stability regularizer (Jin & Rinard, eq. 16). Returns
        ``rho`` itself, not ``x + rho``.
        """
        # One random byte gives 8 signs: 3-4x cheaper than drawing each sign (this runs every step).
        n = x.numel()
        device = generator.device if generator is not None else x.device
        byte = torch.randint(0, 256, ((n + 7) // 8,), dtype=torch.uint8, generator=generator, device=device)
        bits = (byte[:, None] >> torch.arange(8, dtype=torch.uint8, device=device)) & 1
        signs = bits.flatten()[:n].view(x.shape).to(device=x.device, dtype=x.dtype) * 2 - 1
        return signs * self.eps

    def steepest_ascent(self, grad: torch.Tensor) -> torch.Tensor:
        """The unit-norm steepest-ascent direction for this norm (``steepest_ascent``)."""
        return steepest_ascent(grad, self.norm)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-example check that ``x_adv`` is finite, in [0, 1] and inside the ball (with ``tol``)."""
        finite = torch.isfinite(x_adv).flatten(1).all(1)
        in_box = ((x_adv >= -tol) & (x_adv <= 1 + tol)).flatten(1).all(1)
        in_ball = self.norm_of(x_adv - x) <= self.eps * (1 + 1e-5) + tol
        return finite & in_box & in_ball

    def default_step_size(self, steps: int) -> float:
        """The PGD step used throughout: 2.5 * eps / steps (Madry et al.; the paper's evaluation)."""
        return 2.5 * self.eps / max(int(steps), 1)
