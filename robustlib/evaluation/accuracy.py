"""Batched prediction and clean accuracy."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels of ``model`` (put in eval mode by the caller) on ``x``, in batches."""
    device = next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Clean accuracy in [0, 1]; the model is evaluated in eval mode and restored to its previous mode."""
    was_training = model.training
    model.eval()
    try:
        return float((predict(model, x, batch_size) == y.cpu()).float().mean()) if len(y) else float("nan")
    finally:
        model.train(was_training)
