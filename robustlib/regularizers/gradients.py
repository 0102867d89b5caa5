"""Input-gradient regularizers, by double backpropagation (``create_graph=True``):

* ``gradient_penalty``: squared input-gradient norm of the loss or of the logits (Drucker & LeCun 1992;
  Ross & Doshi-Velez 2018);
* ``jacobian``: squared Frobenius norm of the input-output Jacobian, estimated by random projections
  (Hoffman, Roberts & Yaida 2019, "Robust learning with Jacobian regularization", Algorithm 1);
* ``curvature``: CURE (Moosavi-Dezfooli et al. 2019, "Robustness via curvature regularization, and
  vice versa", eq. 5).

Each term runs its own forward pass on a fresh leaf copy of the clean batch, in the model's current
mode. Gradients are per example because every per-example loss depends on its own input only -- true
for every robustlib model except PreActResNet18 in train mode, where BatchNorm couples the batch.
Only ``torch.autograd.grad`` is used: nothing touches the parameters' ``.grad``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.regularizers.core import StepContext, Term, register_term
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def loss_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        create_graph: bool = True) -> torch.Tensor:
    """Per-example ``grad_x CE(f(x), y)`` (shape of ``x``); differentiable w.r.t. the parameters when
    ``create_graph``."""
    xl = _leaf(x)
    loss = F.cross_entropy(model(xl), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xl, create_graph=create_graph)
    return g


def jacobian_frobenius_exact(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Exact per-example squared Frobenius norm ``||d f(x) / d x||_F^2 = sum_c ||grad_x f_c(x)||^2`` of
    the logits' Jacobian: one backward pass per class. Shape ``(B,)``."""
    xl = _leaf(x)
    logits = model(xl)
    total = x.new_zeros(x.shape[0])
    for c in range(logits.shape[1]):
        (g,) = torch.autograd.grad(logits[:, c].sum(), xl, retain_graph=True, create_graph=create_graph)
        total = total + g.flatten(1).pow(2).sum(1)
    return total


def jacobian_frobenius_estimate(model: nn.Module, x: torch.Tensor, n_proj: int = 1,
                                generator: torch.Generator | None = None,
                                create_graph: bool = True) -> torch.Tensor:
    """Hoffman et al. 2019's unbiased random-projection estimate of ``||J(x)||_F^2`` per example:
    ``(C / n_proj) sum_p ||v_p^T J||^2`` with ``v_p`` uniform on the unit sphere of R^C (one per example
    and projection; ``E[v v^T] = I / C``). One backward pass per projection. Shape ``(B,)``."""
    if n_proj < 1:
        raise ValueError(f"n_proj must be >= 1, got {n_proj}")
    xl = _leaf(x)
    logits = model(xl)
    b, c = logits.shape
    total = x.new_zeros(b)
    for p in range(n_proj):
        v = torch.randn((b, c), generator=generator, dtype=logits.dtype).to(logits.device)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        (g,) = torch.autograd.grad((logits * v).sum(), xl, retain_graph=p < n_proj - 1 or create_graph,
                                   create_graph=create_graph)
        total = total + g.flatten(1).pow(2).sum(1)
    return total * (c / n_proj)


def l2_radius(threat: ThreatModel, x: torch.Tensor) -> float:
    """L2 radius of the threat ball: eps for L2, eps * sqrt(d) (the cube's half-diagonal) for L-inf."""
    return threat.eps if threat.norm == "l2" else threat.eps * math.sqrt(x[0].numel())


def curvature_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, h: float) -> torch.Tensor:
    """CURE (Moosavi-Dezfooli et al. 2019, eq. 5) per example: ``||grad l(x + h z) - grad l(x)||_2^2``
    with ``l`` the cross-entropy and ``z = sign(grad l(x)) / ||sign(grad l(x))||_2`` held constant (so
    ``||h z||_2 = h``). Shape ``(B,)``; differentiable w.r.t. the parameters (double backprop)."""
    if h < 0:
        raise ValueError(f"h must be >= 0, got {h}")
    z = loss_input_gradient(model, x, y, create_graph=False).sign()
    z = z / z.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    xl = _leaf(x)
    n = x.shape[0]
    losses = F.cross_entropy(model(torch.cat([xl + h * z, xl])), torch.cat([y, y]), reduction="none")
    # d/dx [l(x + h z) - l(x)] = grad l(x + h z) - grad l(x), with z constant
    (diff,) = torch.autograd.grad((losses[:n] - losses[n:]).sum(), xl, create_graph=True)
    return diff.flatten(1).pow(2).sum(1)


# ---------------------------------------------------------------------------------------------
# Terms
# ---------------------------------------------------------------------------------------------
@register_term
class GradientPenalty(Term):
    """Batch mean of the squared L2 norm of the input gradient: of the per-example cross-entropy
    (``of="loss"``) or of the logits (``of="logits"``: ``sum_c ||grad_x f_c||^2``, the exact squared
    Jacobian Frobenius norm, C backward passes)."""

    name = "gradient_penalty"
    OF = ("loss", "logits")

    def __init__(self, of: str = "loss") -> None:
        if of not in self.OF:
            raise ValueError(f"gradient_penalty: unknown of={of!r}; expected one of {self.OF}")
        self.of = of

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        if self.of == "loss":
            g = loss_input_gradient(ctx.model, ctx.x, ctx.y, create_graph=True)
            return g.flatten(1).pow(2).sum(1).mean()
        return jacobian_frobenius_exact(ctx.model, ctx.x, create_graph=True).mean()


@register_term
class Jacobian(Term):
    """Jacobian regularizer (Hoffman et al. 2019): batch mean of the random-projection estimate of
    ``||J(x)||_F^2`` with ``n_proj`` projections. Their ``lambda_JR / 2`` is this term's weight."""

    name = "jacobian"

    def __init__(self, n_proj: int = 1) -> None:
        if int(n_proj) != n_proj or n_proj < 1:
            raise ValueError(f"jacobian: n_proj must be an integer >= 1, got {n_proj}")
        self.n_proj = int(n_proj)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return jacobian_frobenius_estimate(ctx.model, ctx.x, self.n_proj, ctx.generator).mean()


@register_term
class Curvature(Term):
    """CURE curvature regularizer: batch mean of ``||grad l(x + h z) - grad l(x)||^2`` (the paper's
    squared form; the authors' code uses the unsquared norm). ``h=None`` takes the L2 radius of the
    current threat ball (``l2_radius``), so h follows the eps ramp."""

    name = "curvature"

    def __init__(self, h: float | None = None) -> None:
        if h is not None and not h >= 0:
            raise ValueError(f"curvature: h must be >= 0 (or None), got {h}")
        self.h = None if h is None else float(h)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        h = l2_radius(ctx.threat, ctx.x) if self.h is None else self.h
        return curvature_penalty(ctx.model, ctx.x, ctx.y, h).mean()
