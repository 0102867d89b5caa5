"""Bound-based training terms on interval bounds over the threat ball (``robustlib.bounds``):

* ``ibp``: interval bound propagation training (Gowal et al. 2018, "On the effectiveness of interval
  bound propagation for training verifiably robust models", eq. 12): cross-entropy of the worst-case
  logits. The paper's ``kappa * CE(clean) + (1 - kappa) * CE(worst)`` is the objective's weights:
  ``{"ce": kappa, "ibp": 1 - kappa}``; a kappa schedule is the weight ramp (opt in with ``ramp: true``):
  ``{"ce": 1, "ibp": {"weight": w0, "ramp": true}}`` with ``gamma_ramp = {start, end, factor}`` grows
  the ibp:ce ratio linearly from w0 to w0 * factor, i.e. kappa from 1 / (1 + w0) to
  1 / (1 + w0 * factor) (the loss is scaled by 1 / kappa, which SGD's learning rate absorbs); the eps
  schedule is the training loop's eps ramp (``eps_ramp`` with ``initial: 0`` starts from 0 as Gowal
  et al. do).
* ``rs_loss``: ReLU-stability loss (Xiao et al. 2019, "Training for faster adversarial robustness
  verification via inducing ReLU stability", eq. 4): ``-tanh(1 + l * u)`` per ReLU, from interval
  bounds [l, u] of its input (plain IBP; the paper uses its improved interval arithmetic).

Both need a network ``robustlib.bounds.to_sequential`` accepts (MLP, SmallCNN, CWCNN, nn.Sequential).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from robustlib.regularizers.core import StepContext, Term, register_term

logger = logging.getLogger(__name__)


def _box(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    from robustlib.bounds import input_box

    return input_box(ctx.x, ctx.threat.eps, ctx.threat.norm)


def ibp_worst_logits(ctx: StepContext, elide_last: bool) -> torch.Tensor:
    """Worst-case logits over the threat ball. ``elide_last=False``: the lower bound for the true class
    and the upper bound for the others; ``True``: ``-lb(z_y - z_j)`` with the class difference folded
    into the last linear layer (Gowal et al. 2018's tighter form; 0 at ``j = y``)."""
    from robustlib.bounds import interval_bounds, margin_lower_bounds, to_sequential

    net = to_sequential(ctx.model)
    lower, upper = _box(ctx)
    if elide_last:
        m, _ = margin_lower_bounds(net, lower, upper, ctx.y, "interval")
        return (-m).scatter(1, ctx.y[:, None], 0.0)
    lo, hi = interval_bounds(net, lower, upper)[-1]
    onehot = F.one_hot(ctx.y, hi.shape[1]).bool()
    return torch.where(onehot, lo, hi)


def relu_stability_loss(bounds: list[tuple[torch.Tensor, torch.Tensor]],
                        reduction: str = "mean") -> torch.Tensor:
    """Xiao et al. 2019's RS loss ``-tanh(1 + l * u)`` per ReLU input, from ``[(l, u), ...]`` (one pair
    per ReLU layer): ``"mean"`` over all ReLUs of an example then over the batch, or ``"sum"`` over
    the ReLUs (the paper's form) then mean over the batch."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'sum'")
    per_example = torch.cat([-torch.tanh(1 + l.flatten(1) * u.flatten(1)) for l, u in bounds], 1)
    return (per_example.mean(1) if reduction == "mean" else per_example.sum(1)).mean()


@register_term
class IBP(Term):
    """Cross-entropy of the interval worst-case logits (``ibp_worst_logits``) over the current ball."""

    name = "ibp"

    def __init__(self, elide_last: bool = True) -> None:
        self.elide_last = bool(elide_last)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return F.cross_entropy(ibp_worst_logits(ctx, self.elide_last), ctx.y)


@register_term
class RSLoss(Term):
    """ReLU-stability loss on the interval bounds of every ReLU input over the current ball;
    ``reduction="mean"`` (default: weight independent of width) or ``"sum"`` (the paper's)."""

    name = "rs_loss"

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"rs_loss: unknown reduction {reduction!r}; expected 'mean' or 'sum'")
        self.reduction = reduction

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        from robustlib.bounds import interval_bounds, to_sequential

        lower, upper = _box(ctx)
        bounds = interval_bounds(to_sequential(ctx.model), lower, upper)[:-1]
        return relu_stability_loss(bounds, self.reduction)
