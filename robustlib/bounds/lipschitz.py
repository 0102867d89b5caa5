"""Lipschitz bounds of sequential ReLU networks: the product of per-layer operator norms
(``lipschitz_bound``; convolutions by their exact circular-convolution norm, Sedghi, Gupta & Long 2019)
and the certified L2 radius margin / (sqrt(2) L) (Tsuzuku et al. 2018, Prop. 1).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from robustlib.bounds.intervals import to_sequential
from robustlib.bounds.layers import _shapes
from robustlib.models import Normalize
from robustlib.threat import NORMS

__all__ = ["lipschitz_bound", "lipschitz_upper_bound", "layer_operator_norm", "conv_l2_norm_bound",
           "lipschitz_certified_radius"]


def _default_input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    arch = getattr(model, "arch", None)
    cls = model.__class__
    if not hasattr(model, "as_sequential"):
        return None
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    kwargs = arch.get("kwargs", {}) if isinstance(arch, dict) else {}
    c = kwargs.get("in_channels", params["in_channels"].default if "in_channels" in params else None)
    s = kwargs.get("image_size", params["image_size"].default if "image_size" in params else None)
    if c is None or s is None or c is inspect.Parameter.empty or s is inspect.Parameter.empty:
        return None
    return int(c), int(s), int(s)


def conv_l2_norm_bound(conv: nn.Conv2d, in_shape: tuple[int, ...]) -> Tensor:
    """Sound upper bound on the L2 operator norm of a zero-padded (possibly strided) convolution.

    The padded convolution on an (H, W) input equals a restriction of the circular convolution on the
    (H + 2p_h, W + 2p_w) grid (embed the input, keep the output rows it computes, keep every
    stride-th one); restricting rows and columns never raises the spectral norm. The circular
    convolution's norm is exact in closed form: the largest singular value over all 2-D DFT
    frequencies of the (C_out, C_in) kernel transform (Sedghi, Gupta & Long 2019, Thm. 6).
    Differentiable w.r.t. the weight.
    """
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise ValueError("conv_l2_norm_bound supports groups=1, dilation=1, zero padding only")
    if isinstance(conv.padding, str):
        raise ValueError("conv_l2_norm_bound needs numeric padding")
    W = conv.weight
    n_h, n_w = in_shape[-2] + 2 * conv.padding[0], in_shape[-1] + 2 * conv.padding[1]
    if W.shape[2] > n_h or W.shape[3] > n_w:
        raise ValueError(f"kernel {tuple(W.shape[2:])} larger than the padded input ({n_h}, {n_w})")
    spectrum = torch.fft.fft2(W, s=(n_h, n_w))  # (C_out, C_in, n_h, n_w)
    per_freq = spectrum.permute(2, 3, 0, 1).reshape(n_h * n_w, W.shape[0], W.shape[1])
    return torch.linalg.svdvals(per_freq)[:, 0].max()


def layer_operator_norm(layer: nn.Module, in_shape: tuple[int, ...], norm: str = "l2") -> Tensor:
    """Upper bound on the operator norm of one layer (a map on inputs of per-example shape ``in_shape``).

    L2: Linear exactly (largest singular value); Conv2d by ``conv_l2_norm_bound``. L-inf: the induced
    norm (max absolute row sum; for convolutions an upper bound, exact when some output sees a full
    window). Normalize: 1/min(std); ReLU, Flatten, MaxPool2d (kernel == stride): 1. Differentiable
    w.r.t. the weights.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    one = torch.ones(())
    if isinstance(layer, (nn.ReLU, nn.Flatten, nn.MaxPool2d)):
        return one
    if isinstance(layer, Normalize):
        return 1.0 / layer.std.min()
    W = layer.weight
    if isinstance(layer, nn.Linear):
        if norm == "l2":
            return torch.linalg.matrix_norm(W, ord=2)
        return W.abs().sum(1).max()
    if isinstance(layer, nn.Conv2d):
        if norm == "linf":
            return W.abs().flatten(1).sum(1).max()
        return conv_l2_norm_bound(layer, in_shape)
    raise ValueError(f"no operator norm for {layer.__class__.__name__}")


def lipschitz_bound(model: nn.Module, norm: str = "l2", input_shape: tuple[int, ...] | None = None) -> Tensor:
    """Product of per-layer operator norms (``layer_operator_norm``): a Lipschitz bound of the
    network w.r.t. ``norm`` on inputs and outputs, as a tensor differentiable w.r.t. the weights.

    ``input_shape`` (C, H, W) is needed for convolutions; robustlib models supply it themselves.
    """
    net = to_sequential(model)
    if input_shape is None:
        input_shape = _default_input_shape(model)
    if input_shape is None:
        first = next((m for m in net if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if isinstance(first, nn.Linear) and not any(isinstance(m, nn.Conv2d) for m in net):
            input_shape = (first.in_features,)
        else:
            raise ValueError("lipschitz_bound needs input_shape=(C, H, W) for a network with convolutions")
    ref = next(iter(net.parameters()))
    shapes = _shapes(net, torch.zeros(1, *input_shape, dtype=ref.dtype, device=ref.device))
    total = torch.ones((), dtype=ref.dtype)
    for layer, shape in zip(net, shapes, strict=False):
        total = total * layer_operator_norm(layer, shape, norm).to(ref.dtype)
    return total


def lipschitz_upper_bound(model: nn.Module, norm: str = "l2", input_shape: tuple[int, ...] | None = None) -> float:
    """``lipschitz_bound`` as a float (no gradient): a sound Lipschitz constant of the logits."""
    with torch.no_grad():
        return float(lipschitz_bound(model, norm, input_shape))


def lipschitz_certified_radius(logits: Tensor, y: Tensor, L: float | Tensor) -> Tensor:
    """Certified L2 radius ``max(margin, 0) / (sqrt(2) L)`` (Tsuzuku et al. 2018), where
    ``margin = z_y - max_{j != y} z_j`` and ``L`` is an L2 Lipschitz bound of the logits."""
    L = torch.as_tensor(L, dtype=logits.dtype)
    if not bool(torch.isfinite(L)) or float(L) <= 0:
        raise ValueError(f"L must be a finite positive number, got {float(L)}")
    if logits.dim() != 2 or y.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (B, C) and y (B,), got {tuple(logits.shape)} and {tuple(y.shape)}")
    zy = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (zy - other).clamp_min(0) / (math.sqrt(2.0) * L)
