"""Sound output bounds and certificates for sequential ReLU networks.

Everything here works on an ``nn.Sequential`` of the layers robustlib's verifiable models are made of
(``to_sequential``): ``robustlib.models.Normalize`` (elementwise affine), ``Flatten``, ``Linear``,
``Conv2d``, ``ReLU`` and ``MaxPool2d`` with kernel == stride. Spectral-norm-parametrized Linear/Conv2d
layers are used through ``layer.weight`` (the normalized weight).

- ``interval_bounds``: interval bound propagation (IBP; Gowal et al. 2018, eqs. 6-7, centre/radius
  form), batched and differentiable w.r.t. the parameters (usable inside training losses).
- ``linear_bounds``: progressive tightening as in MIPVerify (Tjeng et al. 2019): interval bounds
  first, then, layer by layer, CROWN linear relaxation bounds (Zhang et al. 2018, back-substitution
  to the input box) for the neurons that are still unstable; the result is intersected with the
  interval bounds, so it is sound and never looser than IBP.
- ``ibp_certified`` / ``margin_lower_bounds``: certificates of ``z_y - z_j > tol`` with the class
  difference folded into the last linear layer (tighter than subtracting logit intervals), ``tol``
  being ``robustlib.bounds.tolerance.margin_tolerance``, the tolerance every certificate (IBP, CROWN,
  MILP) must exceed.

The layer arithmetic lives in ``robustlib.bounds.layers``; Lipschitz bounds in ``robustlib.bounds.lipschitz``.

Bounds hold for exact arithmetic in the dtype of the inputs; the MILP verifier computes them in
float64 and pads them slightly before using them as big-M constants.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlib.bounds.layers import _ibp_layer, _pair, _pool_args, _shapes
from robustlib.bounds.tolerance import MARGIN_ATOL, MARGIN_RTOL, margin_tolerance
from robustlib.models import Normalize
from robustlib.threat import NORMS

logger = logging.getLogger(__name__)

__all__ = [
    "to_sequential", "check_supported", "interval_bounds", "linear_bounds", "input_box",
    "margin_lower_bounds", "layer_bounds", "ibp_certified", "BOUND_METHODS",
]

BOUND_METHODS = ("interval", "linear")
Bounds = list[tuple[Tensor, Tensor]]
_MAX_SPEC_ELEMENTS = 1 << 22  # memory cap for one back-substitution pass (elements of the spec tensor)


# ---------------------------------------------------------------------------------------------------
# The network as a sequence of supported layers
# ---------------------------------------------------------------------------------------------------
def _flatten_modules(modules: Sequence[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            out.extend(_flatten_modules(list(m)))
        else:
            out.append(m)
    return out


def check_supported(net: nn.Sequential) -> None:
    """Raise ``ValueError`` naming the first layer the bounds and the verifier cannot handle."""
    if len(net) == 0:
        raise ValueError("empty network")
    for i, layer in enumerate(net):
        where = f"layer {i} ({layer.__class__.__name__})"
        if isinstance(layer, nn.Conv2d):
            if isinstance(layer.padding, str) and layer.padding != "valid":
                raise ValueError(f"{where}: padding={layer.padding!r} is not supported (use integers)")
            if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros":
                raise ValueError(f"{where}: only groups=1, dilation=1, zero padding are supported")
        elif isinstance(layer, nn.MaxPool2d):
            k, s = _pair(layer.kernel_size), _pair(layer.stride if layer.stride is not None else layer.kernel_size)
            if k != s or _pair(layer.padding) != (0, 0) or _pair(layer.dilation) != (1, 1) or layer.ceil_mode:
                raise ValueError(f"{where}: only MaxPool2d with kernel == stride, no padding/dilation/ceil_mode")
            if layer.return_indices:
                raise ValueError(f"{where}: return_indices=True is not supported")
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ValueError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
        elif not isinstance(layer, (Normalize, nn.Linear, nn.ReLU)):
            raise ValueError(
                f"{where} is not supported; supported layers: Normalize, Flatten, Linear, Conv2d, ReLU, "
                f"MaxPool2d (kernel == stride)"
            )


def to_sequential(model: nn.Module) -> nn.Sequential:
    """The network as one ``nn.Sequential`` of supported layers (sharing parameters with ``model``).

    robustlib's MLP/SmallCNN/CWCNN give ``model.as_sequential()``; an ``nn.Sequential`` is used as is
    (nested Sequentials are flattened). Anything else raises ``ValueError``.
    """
    if isinstance(model, nn.Sequential):
        net = model
    elif callable(getattr(model, "as_sequential", None)):
        net = model.as_sequential()
    else:
        raise ValueError(
            f"cannot verify a {model.__class__.__name__}: expected robustlib's MLP/SmallCNN/CWCNN (with "
            f".as_sequential()) or an nn.Sequential of Normalize/Flatten/Linear/Conv2d/ReLU/MaxPool2d"
        )
    if any(isinstance(m, nn.Sequential) for m in net):
        net = nn.Sequential(*_flatten_modules(list(net)))
    check_supported(net)
    return net


def _check_box(lower: Tensor, upper: Tensor) -> None:
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} and "
                         f"{tuple(upper.shape)}")
    if lower.dim() < 2:
        raise ValueError(f"bounds must be batched (B, ...), got shape {tuple(lower.shape)}")
    if bool((lower > upper).any()):
        raise ValueError("lower > upper somewhere: not a box")


# ---------------------------------------------------------------------------------------------------
# Interval bound propagation
# ---------------------------------------------------------------------------------------------------
def interval_bounds(net: nn.Sequential, lower: Tensor, upper: Tensor) -> Bounds:
    """Interval bounds (Gowal et al. 2018, eqs. 6-7) of every ReLU input, then of the logits.

    Returns ``[(l_1, u_1), ..., (l_k, u_k), (l_out, u_out)]``: the inputs of the ReLUs in forward order
    (the tensors ``model(x, return_preacts=True)`` returns), the logits last. Batched; differentiable
    w.r.t. the network's parameters.
    """
    _check_box(lower, upper)
    out: Bounds = []
    lo, hi = lower, upper
    for layer in net:
        if isinstance(layer, nn.ReLU):
            out.append((lo, hi))
        lo, hi = _ibp_layer(layer, lo, hi)
    out.append((lo, hi))
    return out


# ---------------------------------------------------------------------------------------------------
# Linear relaxation (CROWN) with progressive tightening
# ---------------------------------------------------------------------------------------------------
def _back_affine(layer: nn.Module, A: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Pull ``A`` (B, S, *out_shape) back through an affine layer: returns (A_in, bias_term (B, S))."""
    B, S = A.shape[:2]
    zero = A.new_zeros(B, S)
    if isinstance(layer, Normalize):
        std, mean = layer.std.to(A.dtype)[0], layer.mean.to(A.dtype)[0]  # (C, 1, 1)
        A_in = A / std
        return A_in, -(A_in * mean).flatten(2).sum(-1)
    if isinstance(layer, nn.Flatten):
        return A.reshape(B, S, *in_shape), zero
    if isinstance(layer, nn.Linear):
        W = layer.weight.to(A.dtype)
        bias = A @ layer.bias.to(A.dtype) if layer.bias is not None else zero
        return A @ W, bias
    if isinstance(layer, nn.Conv2d):
        W = layer.weight.to(A.dtype)
        c_out, h_out, w_out = A.shape[2:]
        flat = A.reshape(B * S, c_out, h_out, w_out)
        (sh, sw), (ph, pw) = _pair(layer.stride), _pair(layer.padding)
        kh, kw = W.shape[2:]
        h_in, w_in = in_shape[1:]
        oph = h_in - ((h_out - 1) * sh - 2 * ph + kh)
        opw = w_in - ((w_out - 1) * sw - 2 * pw + kw)
        A_in = F.conv_transpose2d(flat, W, None, layer.stride, layer.padding, (oph, opw))
        bias = (A.sum((-2, -1)) @ layer.bias.to(A.dtype)) if layer.bias is not None else zero
        return A_in.reshape(B, S, *in_shape), bias
    raise TypeError(layer)


def _relu_relaxation(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CROWN relaxation of ReLU on [lo, hi]: lower slope (adaptive 0/1), upper slope and intercept."""
    active, inactive = lo >= 0, hi <= 0
    unstable = ~(active | inactive)
    denom = (hi - lo).clamp_min(1e-30)
    up_slope = torch.where(unstable, hi.clamp_min(0) / denom, active.to(lo.dtype))
    up_icpt = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
    low_slope = torch.where(unstable, (hi >= -lo).to(lo.dtype), active.to(lo.dtype))
    return low_slope, up_slope, up_icpt


def _back_relu(A: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    low_slope, up_slope, up_icpt = _relu_relaxation(lo, hi)
    Ap, An = A.clamp_min(0), A.clamp_max(0)
    A_in = Ap * low_slope.unsqueeze(1) + An * up_slope.unsqueeze(1)
    return A_in, (An * up_icpt.unsqueeze(1)).flatten(2).sum(-1)


def _back_maxpool(layer: nn.MaxPool2d, A: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Max over a window: ``y >= x_i*`` (i* = argmax of the lower bounds) and ``y <= max u``, or
    ``y = x_i*`` exactly when ``l_i* >= u_j`` for every other j in the window."""
    k = _pool_args(layer)
    B, S = A.shape[:2]
    l_max, idx = F.max_pool2d(lo, k, k, return_indices=True)
    u_max = F.max_pool2d(hi, k, k)
    masked = hi.flatten(2).scatter(2, idx.flatten(2), float("-inf")).view_as(hi)
    u_other = F.max_pool2d(masked, k, k)
    dominated = (l_max >= u_other).to(A.dtype)
    Ap, An = A.clamp_min(0), A.clamp_max(0)
    coef = Ap + An * dominated.unsqueeze(1)
    bias = (An * ((1 - dominated) * u_max).unsqueeze(1)).flatten(2).sum(-1)
    out_shape = lo.shape[1:]
    idx_e = idx.unsqueeze(1).expand(B, S, *idx.shape[1:]).reshape(B * S, *idx.shape[1:])
    A_in = F.max_unpool2d(coef.reshape(B * S, *coef.shape[2:]), idx_e, k, k, output_size=out_shape[1:])
    return A_in.reshape(B, S, *out_shape), bias


def _backsubstitute(net: nn.Sequential, stop: int, A: Tensor, shapes: list[tuple[int, ...]],
                    act_bounds: dict[int, tuple[Tensor, Tensor]], lower: Tensor, upper: Tensor) -> Tensor:
    """Lower bound of ``A . h_stop`` over the input box, where ``h_stop`` is the output of
    ``net[:stop]``; ``act_bounds[i]`` are bounds of the input of the nonlinear layer ``net[i]``."""
    bias = A.new_zeros(A.shape[:2])
    for i in range(stop - 1, -1, -1):
        layer = net[i]
        if isinstance(layer, nn.ReLU):
            A, b = _back_relu(A, *act_bounds[i])
        elif isinstance(layer, nn.MaxPool2d):
            A, b = _back_maxpool(layer, A, *act_bounds[i])
        else:
            A, b = _back_affine(layer, A, shapes[i])
        bias = bias + b
    Ap, An = A.clamp_min(0), A.clamp_max(0)
    lo, hi = lower.unsqueeze(1), upper.unsqueeze(1)
    return bias + (Ap * lo + An * hi).flatten(2).sum(-1)


def _crown_neurons(net, stop, neuron_idx, shapes, act_bounds, lower, upper) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds of the selected (flat) neurons of ``net[:stop]``'s output."""
    B = lower.shape[0]
    shape = shapes[stop]
    n = int(math.prod(shape))
    per_row = 2 * B * max(max(math.prod(s) for s in shapes[: stop + 1]), 1)
    chunk = max(1, _MAX_SPEC_ELEMENTS // per_row)
    lows, highs = [], []
    for start in range(0, len(neuron_idx), chunk):
        sel = neuron_idx[start:start + chunk]
        eye = torch.zeros(len(sel), n, dtype=lower.dtype, device=lower.device)
        eye[torch.arange(len(sel)), sel] = 1.0
        A = torch.cat([eye, -eye]).unsqueeze(0).expand(B, -1, -1).reshape(B, 2 * len(sel), *shape)
        val = _backsubstitute(net, stop, A, shapes, act_bounds, lower, upper)
        lows.append(val[:, :len(sel)])
        highs.append(-val[:, len(sel):])
    return torch.cat(lows, 1), torch.cat(highs, 1)



def layer_bounds(net: nn.Sequential, lower: Tensor, upper: Tensor, method: str = "linear",
                 spec: Tensor | None = None) -> tuple[dict[int, tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
    """Bounds of the input of every nonlinear layer (``{index in net: (l, u)}``, ReLU and MaxPool2d)
    and of the output (or of ``spec @ output`` when ``spec`` (B, S, n_out) is given).

    ``interval``: IBP. ``linear``: MIPVerify-style progressive tightening: interval first, then CROWN
    back-substitution for the neurons still unstable, intersected with the interval bounds.
    """
    if method not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {method!r}; expected one of {BOUND_METHODS}")
    _check_box(lower, upper)
    shapes = _shapes(net, lower)
    act_bounds: dict[int, tuple[Tensor, Tensor]] = {}
    lo, hi = lower, upper
    seen_nonlinear = False
    for i, layer in enumerate(net):
        if isinstance(layer, (nn.ReLU, nn.MaxPool2d)):
            if seen_nonlinear and method == "linear":
                flat_lo, flat_hi = lo.flatten(1), hi.flatten(1)
                if isinstance(layer, nn.ReLU):
                    need = ((flat_lo < 0) & (flat_hi > 0)).any(0)
                else:
                    need = torch.ones_like(flat_lo[0], dtype=torch.bool)
                idx = need.nonzero().flatten()
                if len(idx):
                    cl, ch = _crown_neurons(net, i, idx, shapes, act_bounds, lower, upper)
                    flat_lo, flat_hi = flat_lo.clone(), flat_hi.clone()
                    flat_lo[:, idx] = torch.maximum(flat_lo[:, idx], cl)
                    flat_hi[:, idx] = torch.minimum(flat_hi[:, idx], ch)
                    lo, hi = flat_lo.view_as(lo), flat_hi.view_as(hi)
            act_bounds[i] = (lo, hi)
            seen_nonlinear = True
        lo, hi = _ibp_layer(layer, lo, hi)
    if spec is not None:
        if spec.dim() != 3 or spec.shape[0] != lower.shape[0] or lo.dim() != 2 or spec.shape[2] != lo.shape[1]:
            raise ValueError(f"spec must be (B, S, n_out) matching the output {tuple(lo.shape)}, "
                             f"got {tuple(spec.shape)}")
        spec = spec.to(lower.dtype)
        c, r = (hi + lo) / 2, (hi - lo) / 2
        ic = (spec @ c.unsqueeze(-1)).squeeze(-1)
        ir = (spec.abs() @ r.unsqueeze(-1)).squeeze(-1)
        lo, hi = ic - ir, ic + ir
        if method == "linear":
            s = spec.shape[1]
            val = _backsubstitute(net, len(net), torch.cat([spec, -spec], 1), shapes, act_bounds, lower, upper)
            lo, hi = torch.maximum(val[:, :s], lo), torch.minimum(-val[:, s:], hi)
    elif method == "linear" and seen_nonlinear:
        idx = torch.arange(lo[0].numel(), device=lo.device)
        cl, ch = _crown_neurons(net, len(net), idx, shapes, act_bounds, lower, upper)
        lo, hi = torch.maximum(lo, cl.view_as(lo)), torch.minimum(hi, ch.view_as(hi))
    return act_bounds, (lo, hi)


def _relu_list(net: nn.Sequential, act_bounds: dict[int, tuple[Tensor, Tensor]]) -> Bounds:
    return [act_bounds[i] for i, layer in enumerate(net) if isinstance(layer, nn.ReLU)]


def linear_bounds(net: nn.Sequential, lower: Tensor, upper: Tensor, spec: Tensor | None = None) -> Bounds:
    """Progressively tightened bounds (MIPVerify-style): interval first, then CROWN linear
    relaxation (Zhang et al. 2018) for every neuron still unstable, intersected with the interval
    bounds. Same structure as ``interval_bounds``; sound and at least as tight.

    With ``spec`` (B, S, n_logits), the last element bounds ``spec @ logits`` instead of the logits
    (e.g. rows ``e_y - e_j`` for classification margins), by back-substitution from the spec.
    """
    act, final = layer_bounds(net, lower, upper, "linear", spec)
    return _relu_list(net, act) + [final]


# ---------------------------------------------------------------------------------------------------
# Input boxes and certificates
# ---------------------------------------------------------------------------------------------------
def _check_eps_norm(eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def input_box(x: Tensor, eps: float, norm: str = "linf") -> tuple[Tensor, Tensor]:
    """The eps-ball around ``x`` intersected with [0, 1], as a box (for L2: the enclosing L-inf box)."""
    _check_eps_norm(eps, norm)
    if x.dim() < 2:
        raise ValueError(f"x must be batched (B, ...), got shape {tuple(x.shape)}")
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError("inputs must lie in [0, 1]")
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def _difference_spec(y: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(B, C, C) rows ``e_y - e_j`` (row j = y is zero)."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def margin_lower_bounds(net: nn.Sequential, lower: Tensor, upper: Tensor, y: Tensor,
                        method: str = "interval") -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
    """Lower bounds of ``z_y - z_j`` (B, C) over the box (``+inf`` at ``j = y``), and the bounds of
    the input of every nonlinear layer (``layer_bounds``) they came from.

    ``interval``: IBP with the class difference folded into the last linear layer (its rows
    ``w_y - w_j``), tighter than subtracting logit intervals. ``linear``: progressive CROWN with the
    difference as the specification, intersected with the folded interval bound (never looser).
    """
    if method not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {method!r}; expected one of {BOUND_METHODS}")
    _check_box(lower, upper)
    n_out = _shapes(net, lower)[-1]
    if len(n_out) != 1:
        raise ValueError(f"the network must output logits (B, C), got per-example shape {n_out}")
    if y.shape != (lower.shape[0],):
        raise ValueError(f"y must have shape ({lower.shape[0]},), got {tuple(y.shape)}")
    if len(y) and (int(y.max()) >= n_out[0] or int(y.min()) < 0):
        raise ValueError(f"labels must be in [0, {n_out[0]})")
    last = net[-1]
    if method == "interval" and isinstance(last, nn.Linear):
        act, (lo, hi) = layer_bounds(net[:-1], lower, upper, "interval")
        W = last.weight.to(lower.dtype)
        b = last.bias.to(lower.dtype) if last.bias is not None else W.new_zeros(W.shape[0])
        Wd = W[y].unsqueeze(1) - W.unsqueeze(0)  # (B, C, n): rows w_y - w_j
        bd = b[y].unsqueeze(1) - b.unsqueeze(0)
        c, r = (hi + lo) / 2, (hi - lo) / 2
        m = (Wd @ c.unsqueeze(-1)).squeeze(-1) - (Wd.abs() @ r.unsqueeze(-1)).squeeze(-1) + bd
    else:
        act, (m, _) = layer_bounds(net, lower, upper, method, spec=_difference_spec(y, n_out[0], lower.dtype))
        if method == "linear":
            m = torch.maximum(m, margin_lower_bounds(net, lower, upper, y, "interval")[0])
    return m.scatter(1, y[:, None], float("inf")), act


def ibp_certified(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
                  margin_atol: float = MARGIN_ATOL, margin_rtol: float = MARGIN_RTOL,
                  margin_float32: bool = False) -> Tensor:
    """Per-example certificate (BoolTensor): the interval lower bound of ``z_y - z_j`` exceeds the
    numerical tolerance ``margin_tolerance`` (the verifier's) for all ``j != y``, with the class
    difference folded into the last linear layer. Computed in float64. For L2 the enclosing L-inf box
    is used (sound, looser)."""
    net = to_sequential(model)
    lower, upper = input_box(x.double(), eps, norm)
    with torch.no_grad():
        m, act = margin_lower_bounds(net, lower, upper, y, "interval")
        tol = margin_tolerance(net, lower, upper, act, margin_atol, margin_rtol, margin_float32).tol
    return (m > tol.unsqueeze(1)).all(1)

