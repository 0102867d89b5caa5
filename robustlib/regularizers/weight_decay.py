"""Weight decay as an explicit objective term: the paper's gamma_K ||theta||^2 regularizer."""

from __future__ import annotations

import logging

import torch

from robustlib.regularizers.core import StepContext, Term, register_term

logger = logging.getLogger(__name__)


@register_term
class WeightDecay(Term):
    """``1/2 * sum ||p||^2`` over the trainable parameters: with weight lambda, its gradient is
    ``lambda * p``, the same update as ``torch.optim.SGD(weight_decay=lambda)`` (which decays every
    parameter of its group, biases included). ``biases=False`` skips 1-D parameters (biases, BatchNorm
    affine). Set the training config's ``weight_decay`` to 0 when using it."""

    name = "weight_decay"

    def __init__(self, biases: bool = True) -> None:
        self.biases = bool(biases)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        params = [p for p in ctx.model.parameters() if p.requires_grad and (self.biases or p.dim() > 1)]
        if not params:
            raise ValueError("weight_decay: the model has no trainable parameters to decay")
        return 0.5 * sum(p.pow(2).sum() for p in params)
