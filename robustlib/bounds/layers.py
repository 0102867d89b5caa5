"""The layer arithmetic every bound is built from: applying an affine layer (with or without its
bias, or its absolute linear part), one layer's interval image, and the per-example shape of every
layer's input. Layers are those ``robustlib.bounds.intervals.to_sequential`` accepts: ``Normalize``,
``Flatten``, ``Linear``, ``Conv2d``, ``ReLU`` and ``MaxPool2d`` with kernel == stride.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlib.models import Normalize

__all__ = ["affine_linear_part"]

_AFFINE = (Normalize, nn.Flatten, nn.Linear, nn.Conv2d)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_args(layer: nn.MaxPool2d) -> tuple[int, int]:
    return _pair(layer.kernel_size)


def _affine(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply an affine layer (with its bias)."""
    if isinstance(layer, Normalize):
        return (x - layer.mean.to(x.dtype)) / layer.std.to(x.dtype)
    if isinstance(layer, nn.Flatten):
        return x.flatten(1)
    if isinstance(layer, nn.Linear):
        b = layer.bias.to(x.dtype) if layer.bias is not None else None
        return F.linear(x, layer.weight.to(x.dtype), b)
    if isinstance(layer, nn.Conv2d):
        b = layer.bias.to(x.dtype) if layer.bias is not None else None
        return F.conv2d(x, layer.weight.to(x.dtype), b, layer.stride, layer.padding)
    raise TypeError(layer)


def affine_linear_part(layer: nn.Module, x: Tensor, absolute: bool = False) -> Tensor:
    """Apply the linear part of an affine layer (no bias): ``W x``, or ``|W| x`` with ``absolute`` (the
    radius propagation of interval bounds). Normalize's linear part is the division by std."""
    if isinstance(layer, Normalize):
        return x / layer.std.to(x.dtype)
    if isinstance(layer, nn.Flatten):
        return x.flatten(1)
    w = layer.weight.to(x.dtype)
    w = w.abs() if absolute else w
    if isinstance(layer, nn.Linear):
        return F.linear(x, w)
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, w, None, layer.stride, layer.padding)
    raise TypeError(layer)



def _ibp_layer(layer: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(layer, nn.ReLU):
        return lo.clamp_min(0), hi.clamp_min(0)
    if isinstance(layer, nn.MaxPool2d):
        k = _pool_args(layer)
        return F.max_pool2d(lo, k, k), F.max_pool2d(hi, k, k)
    c, r = (hi + lo) / 2, (hi - lo) / 2
    c, r = _affine(layer, c), affine_linear_part(layer, r, absolute=True)
    return c - r, c + r



def _shapes(net: nn.Sequential, x: Tensor) -> list[tuple[int, ...]]:
    """Per-example input shape of every layer, then the output shape."""
    shapes = []
    h = torch.zeros(1, *x.shape[1:], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for layer in net:
            shapes.append(tuple(h.shape[1:]))
            h = layer(h) if not isinstance(layer, _AFFINE) else _affine(layer, h)
    shapes.append(tuple(h.shape[1:]))
    return shapes

