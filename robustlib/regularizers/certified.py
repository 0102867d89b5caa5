"""Bound-based training terms on interval bounds over the threat ball (``robustlib.bounds.intervals``):

* ``ibp``: interval bound propagation training (Gowal et al. 2018, "On the effectiveness of interval
  bound propagation for training verifiably robust models", eq. 12): ``kappa * CE(clean) +
  (1 - kappa) * CE(worst-case logits)`` with kappa decreasing linearly from ``kappa_start`` (1) to
  ``kappa_end`` (0.5) over the eps ramp, as Gowal et al. do (warm-up at eps 0 and kappa 1, then eps and
  kappa ramped together). The eps schedule is the training loop's eps ramp (``eps_ramp`` with
  ``initial: 0``); the term reads its progress from ``StepContext.eps_fraction``. Used alone (it holds
  the clean cross-entropy).
* ``rs_loss``: ReLU-stability loss (Xiao et al. 2019, "Training for faster adversarial robustness
  verification via inducing ReLU stability", eq. 4): ``-tanh(1 + l * u)`` per ReLU, summed over the
  ReLUs and averaged over the batch as in their code (MadryLab/relu_stable, ``_l_relu_stable``), from
  the naive interval bounds [l, u] of its input over the eps-box clipped to [0, 1] (their default
  ``estimation_method: naive_ia``). Xiao et al. pair it with PGD adversarial training and ``l1``:
  their objective is ``pgd_at + 2e-5 * l1 + 1e-4 * rs_loss`` (config.json: ``w_l1``, ``w_rsloss``;
  PGD 8 steps of 0.03 at eps 0.1, random start).
* ``l1``: Xiao et al.'s L1 weight penalty: ``sum |W|`` of every weight matrix but the output layer's, a
  convolution's kernel counted once per output position (the L1 norm of the equivalent dense matrix,
  as ``14 * 14 * |W_conv1| + 7 * 7 * |W_conv2| + |W_fc1|`` in their code).

Both need a network ``robustlib.bounds.intervals.to_sequential`` accepts (MLP, SmallCNN, CWCNN, nn.Sequential).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.bounds.intervals import input_box, interval_bounds, margin_lower_bounds, to_sequential
from robustlib.regularizers.core import StepContext, Term, register_term

logger = logging.getLogger(__name__)


def _box(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    return input_box(ctx.x, ctx.threat.eps, ctx.threat.norm)


def ibp_worst_logits(ctx: StepContext, elide_last: bool) -> torch.Tensor:
    """Worst-case logits over the threat ball. ``elide_last=False``: the lower bound for the true class
    and the upper bound for the others; ``True``: ``-lb(z_y - z_j)`` with the class difference folded
    into the last linear layer (Gowal et al. 2018's tighter form; 0 at ``j = y``)."""
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
    """Gowal et al. 2018: ``kappa * CE(clean) + (1 - kappa) * CE(worst-case logits)`` over the current
    ball, kappa linear in the eps ramp's progress from ``kappa_start`` to ``kappa_end`` (1 -> 0.5)."""

    name = "ibp"
    views = ("clean",)

    def __init__(self, elide_last: bool = True, kappa_start: float = 1.0, kappa_end: float = 0.5) -> None:
        if not (0.0 <= kappa_end <= 1.0 and 0.0 <= kappa_start <= 1.0):
            raise ValueError(f"ibp: kappa_start, kappa_end must lie in [0, 1], got {kappa_start}, {kappa_end}")
        self.elide_last = bool(elide_last)
        self.kappa_start, self.kappa_end = float(kappa_start), float(kappa_end)

    def kappa(self, eps_fraction: float) -> float:
        t = min(max(float(eps_fraction), 0.0), 1.0)
        return self.kappa_start + t * (self.kappa_end - self.kappa_start)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        kappa = self.kappa(ctx.eps_fraction)
        loss = kappa * F.cross_entropy(ctx.logits["clean"], ctx.y) if kappa > 0 else 0.0
        if kappa < 1:
            loss = loss + (1 - kappa) * F.cross_entropy(ibp_worst_logits(ctx, self.elide_last), ctx.y)
        return loss


@register_term
class RSLoss(Term):
    """ReLU-stability loss on the interval bounds of every ReLU input over the current ball;
    ``reduction="sum"`` over the ReLUs (Xiao et al.'s, default) or ``"mean"``, then a batch mean."""

    name = "rs_loss"

    def __init__(self, reduction: str = "sum") -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"rs_loss: unknown reduction {reduction!r}; expected 'mean' or 'sum'")
        self.reduction = reduction

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        lower, upper = _box(ctx)
        bounds = interval_bounds(to_sequential(ctx.model), lower, upper)[:-1]
        return relu_stability_loss(bounds, self.reduction)


def conv_output_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, int]:
    """Number of output positions (H_out * W_out) of every Conv2d of ``model`` for one input of
    ``input_shape`` (C, H, W), from one no-grad forward pass with hooks."""
    sizes: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.__setitem__(mod, out[0, 0].numel()))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    return sizes


@register_term
class L1(Term):
    """Xiao et al. 2019's L1 penalty: ``sum |W|`` over every Conv2d / Linear weight except the last
    Linear (the output layer), each convolution weighted by its number of output positions
    (``conv_scaling``; the L1 norm of the dense matrix the convolution is) -- biases are not penalised."""

    name = "l1"

    def __init__(self, conv_scaling: bool = True, output_layer: bool = False) -> None:
        self.conv_scaling, self.output_layer = bool(conv_scaling), bool(output_layer)
        self._positions: dict[nn.Module, int] = {}
        self._model_id: int | None = None

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        layers = [m for m in ctx.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not layers:
            raise ValueError("l1: the model has no Conv2d or Linear layer")
        if not self.output_layer and isinstance(layers[-1], nn.Linear):
            layers = layers[:-1]
        if self.conv_scaling and self._model_id != id(ctx.model):
            self._positions = conv_output_positions(ctx.model, tuple(ctx.x.shape[1:]))
            self._model_id = id(ctx.model)
        total = ctx.x.new_zeros(())
        for m in layers:
            scale = self._positions.get(m, 1) if (self.conv_scaling and isinstance(m, nn.Conv2d)) else 1
            total = total + scale * m.weight.abs().sum()
        return total
