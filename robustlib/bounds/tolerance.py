"""The numerical tolerance every certificate (IBP, CROWN, MILP) must exceed: an absolute term, a term
relative to the logit scale and, optionally, a rigorous bound on float32 evaluation error
(``float32_error_bound``, Higham's forward error analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlib.bounds.layers import _ibp_layer, _pair, _pool_args, affine_linear_part
from robustlib.models import Normalize

__all__ = ["float32_error_bound", "margin_tolerance", "MarginTolerance", "MARGIN_ATOL", "MARGIN_RTOL"]

MARGIN_ATOL = 1e-4
"""Absolute part of the margin a certificate must exceed (logit units)."""
MARGIN_RTOL = 1e-5
"""Relative part, times a bound on the largest logit magnitude over the box (the scale of the MILP's
big-M constants and objective, so it covers the solvers' feasibility tolerances)."""
FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24


@dataclass
class MarginTolerance:
    """``tol = atol + rtol * logit_scale (+ 2 * float32_error)`` per example (B,), and its parts."""

    tol: Tensor
    logit_scale: Tensor  # bound on max_j |z_j| over the box
    float32_error: Tensor  # bound on max_j |fl32(z_j) - z_j| over the box


def _gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u) for float32 (u = 2^-24)."""
    nu = n * FLOAT32_UNIT_ROUNDOFF
    if nu >= 1:
        raise ValueError(f"a dot product of length {n} is too long for a float32 error bound")
    return nu / (1 - nu)


@torch.no_grad()
def float32_error_bound(net: nn.Sequential, lower: Tensor, upper: Tensor,
                        act_bounds: dict[int, tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor]:
    """A bound on ``|fl32(z) - z|`` for every logit over the box: the network evaluated in float32 at
    any float32 point of ``[lower, upper]`` against the same network in exact arithmetic (same float32
    weights). Returns ``(logit_abs_bound (B, C), error (B, C))``, both float64.

    Forward error analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, eq. 3.5):
    an affine output ``w . h + b`` over ``n`` terms computed in float32 in any summation order (blocked,
    pairwise, with or without FMA) is within ``gamma_{n+1} (|w| . |h| + |b|)`` of its exact value at
    the float32 inputs ``h``; an input error ``e`` adds ``|w| . e``. ReLU and max-pooling are
    1-Lipschitz and exact in floating point, so they pass the error on. ``|h|`` is bounded by interval
    propagation, intersected with ``act_bounds`` (e.g. CROWN bounds of the nonlinear layers' inputs)
    when given. Direct convolution and GEMM satisfy this; Winograd/FFT convolutions and TF32 or
    reduced-precision matrix products do not (the verifier replays on the CPU in float32)."""
    lo, hi = lower.double(), upper.double()
    err = torch.zeros_like(lo)
    for i, layer in enumerate(net):
        if act_bounds is not None and i in act_bounds:
            al, ah = act_bounds[i]
            lo, hi = torch.maximum(lo, al.to(lo.dtype).view_as(lo)), torch.minimum(hi, ah.to(hi.dtype).view_as(hi))
            hi = torch.maximum(hi, lo)
        mag = torch.maximum(lo.abs(), hi.abs())
        if isinstance(layer, Normalize):
            mean, std = layer.mean.to(lo.dtype), layer.std.to(lo.dtype)
            err = err / std + _gamma(2) * (mag + mean.abs()) / std  # (x - m) / s: two roundings
        elif isinstance(layer, nn.Linear):
            bias = layer.bias.detach().to(lo.dtype).abs() if layer.bias is not None else 0.0
            g = _gamma(layer.in_features + 1)
            err = affine_linear_part(layer, err, absolute=True) + g * (
                affine_linear_part(layer, mag + err, absolute=True) + bias)
        elif isinstance(layer, nn.Conv2d):
            kh, kw = _pair(layer.kernel_size)
            g = _gamma(layer.in_channels * kh * kw + 1)
            bias = layer.bias.detach().to(lo.dtype).abs().view(1, -1, 1, 1) if layer.bias is not None else 0.0
            err = affine_linear_part(layer, err, absolute=True) + g * (
                affine_linear_part(layer, mag + err, absolute=True) + bias)
        elif isinstance(layer, nn.Flatten):
            err = err.flatten(1)
        elif isinstance(layer, nn.MaxPool2d):
            k = _pool_args(layer)
            err = F.max_pool2d(err, k, k)
        lo, hi = _ibp_layer(layer, lo, hi)
    mag = torch.maximum(lo.abs(), hi.abs())
    return mag * (1 + 1e-9), err * (1 + 1e-6)  # float64 rounding of the bounds themselves


@torch.no_grad()
def margin_tolerance(net: nn.Sequential, lower: Tensor, upper: Tensor,
                     act_bounds: dict[int, tuple[Tensor, Tensor]] | None = None,
                     atol: float = MARGIN_ATOL, rtol: float = MARGIN_RTOL, float32: bool = False) -> MarginTolerance:
    """The margin a proven lower bound of ``min_j z_y - z_j`` must exceed before an example is called
    verified (by a bound or by the MILP): ``atol + rtol * S`` per example, with ``S`` a bound on the
    largest logit magnitude over the box; with ``float32=True`` also ``+ 2 E``, ``E`` being
    ``float32_error_bound``'s rigorous bound on the float32 evaluation error of any logit (a margin
    above ``2 E`` keeps the float32 network's argmax at every float32 point of the box).

    Why these terms: the solvers' feasibility and optimality tolerances
    (``robustlib.verification.solvers.HIGHS_OPTIONS``, ``SCIP_PARAMS``: 1e-6 to 1e-7) are absolute or
    scaled by the problem's coefficients, whose size is that of the big-M constants, i.e. of ``S``;
    float32 evaluation of a logit errs by about ``sqrt(n) u |w| |h|`` in practice (u = 6e-8; measured
    ~1e-6 relative on SmallCNN), so ``rtol = 1e-5`` (10x that) and ``atol = 1e-4`` cover both with
    room. The rigorous worst-case bound ``E`` (``n u`` per dot product, amplified by every layer's
    ``|W|``) is 10^4-10^5 times the observed error: on an MNIST SmallCNN it is 0.1-0.3 logits, so it
    is opt-in (``verify.margin_float32``)."""
    if not (atol >= 0 and rtol >= 0 and math.isfinite(atol) and math.isfinite(rtol)):
        raise ValueError(f"margin tolerances must be finite and >= 0, got atol={atol!r}, rtol={rtol!r}")
    mag, err = float32_error_bound(net, lower, upper, act_bounds)
    scale, e = mag.flatten(1).amax(1), err.flatten(1).amax(1)
    return MarginTolerance(atol + rtol * scale + (2 * e if float32 else 0.0), scale, e)

