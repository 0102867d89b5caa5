"""Margin losses on the logits: the multi-class hinge and Lipschitz-margin training.

* ``margin``: multi-class hinge, Crammer & Singer 2001 (``max(0, m - (z_y - max_{j != y} z_j))``) or
  Weston & Watkins 1999 (``sum_{j != y} max(0, m - (z_y - z_j))``);
* ``lipschitz_margin``: Tsuzuku, Sato & Sugiyama 2018 ("Lipschitz-Margin Training", Alg. 1): cross-
  entropy after adding ``sqrt(2) * L * eps_2`` to every non-true logit, with L the network's L2
  Lipschitz bound (``robustlib.bounds.intervals.lipschitz_bound``, differentiable, so the bound itself is
  penalized as in the paper) and eps_2 the L2 radius the certificate is evaluated at (``radius``; by
  default the L2 radius of the threat ball, eps * sqrt(d) for L-inf -- far larger than any L2 radius
  evaluated, e.g. 8.4 for MNIST at 0.3, at which SmallCNN collapsed to 12.9% clean).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.bounds.lipschitz import lipschitz_bound
from robustlib.regularizers.core import StepContext, Term, register_term
from robustlib.regularizers.gradients import l2_radius

logger = logging.getLogger(__name__)

HINGES = ("crammer_singer", "weston_watkins")


def multiclass_hinge(logits: torch.Tensor, y: torch.Tensor, margin: float = 1.0,
                     kind: str = "crammer_singer") -> torch.Tensor:
    """Per-example multi-class hinge loss (shape ``(B,)``); see the module docstring for the two kinds.
    The Weston-Watkins sum is not divided by C (``torch.nn.MultiMarginLoss`` divides)."""
    if kind not in HINGES:
        raise ValueError(f"unknown hinge {kind!r}; expected one of {HINGES}")
    zy = logits.gather(1, y[:, None])
    viol = (margin - zy + logits).clamp_min(0).scatter(1, y[:, None], 0.0)  # (B, C), zero at j = y
    return viol.amax(1) if kind == "crammer_singer" else viol.sum(1)


def lipschitz_margin_logits(logits: torch.Tensor, y: torch.Tensor, lipschitz: torch.Tensor | float,
                            radius: float) -> torch.Tensor:
    """Tsuzuku et al. 2018: ``z_j + sqrt(2) * L * radius`` for every ``j != y``, ``z_y`` unchanged."""
    shift = math.sqrt(2.0) * lipschitz * radius
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return logits + (1 - onehot) * shift


@register_term
class Margin(Term):
    """Batch mean of the multi-class hinge (``kind``: ``crammer_singer`` or ``weston_watkins``) with
    margin ``margin`` on the clean logits."""

    name = "margin"
    views = ("clean",)

    def __init__(self, margin: float = 1.0, kind: str = "crammer_singer") -> None:
        if not margin >= 0:
            raise ValueError(f"margin: margin must be >= 0, got {margin}")
        if kind not in HINGES:
            raise ValueError(f"margin: unknown kind {kind!r}; expected one of {HINGES}")
        self.margin, self.kind = float(margin), kind

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return multiclass_hinge(ctx.logits["clean"], ctx.y, self.margin, self.kind).mean()


@register_term
class LipschitzMargin(Term):
    """Lipschitz-margin training (Tsuzuku et al. 2018): cross-entropy of the clean logits with
    ``sqrt(2) * L * eps_2`` added to the non-true logits. L: product of per-layer L2 operator norms
    (``robustlib.bounds.intervals.lipschitz_bound``; convolutions by their FFT bound), differentiable unless
    ``detach_bound``. Needs a network that
    ``robustlib.bounds.intervals.to_sequential`` accepts. Replaces ``ce`` (use it with ``ce: 0`` or alone).
    ``radius``: the L2 radius to certify (set it to the L2 radius the run is evaluated at); ``None``:
    the threat ball's L2 radius (``l2_radius``)."""

    name = "lipschitz_margin"
    views = ("clean",)

    def __init__(self, detach_bound: bool = False, radius: float | None = None) -> None:
        if radius is not None and not radius > 0:
            raise ValueError(f"lipschitz_margin: radius must be > 0 (or None for the threat ball's), got {radius}")
        self.detach_bound = bool(detach_bound)
        self.radius = None if radius is None else float(radius)

    def lipschitz(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        L = lipschitz_bound(model, "l2", input_shape=tuple(x.shape[1:]))
        return L.detach() if self.detach_bound else L

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        L = self.lipschitz(ctx.model, ctx.x)
        radius = l2_radius(ctx.threat, ctx.x) if self.radius is None else self.radius
        logits = lipschitz_margin_logits(ctx.logits["clean"], ctx.y, L, radius)
        return F.cross_entropy(logits, ctx.y)
