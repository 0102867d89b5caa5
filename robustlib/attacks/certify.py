"""Sound per-example certificates on the exact threat ball, for the attacks' blind spots.

An example that survives every attack with an exactly zero input Jacobian is invisible to gradient
attacks (``robustlib.attacks.autoattack``); it may still be robust, e.g. when a whole first ReLU layer
stays off over the ball, so the logits are constant there. ``certified_in_ball`` decides such examples
by bounds that are sound for the threat model's own ball:

- L-inf: CROWN with MIPVerify-style progressive tightening (``robustlib.bounds.intervals``, method ``linear``),
  intersected with interval bounds, on the box ``[x - eps, x + eps] & [0, 1]``.
- L2: interval bounds of the enclosing box are vacuous for CIFAR-sized budgets (eps 1.0 covers all of
  ``[0, 1]``), so the first affine block ``A x + b`` (every layer before the first ReLU) is bounded on
  the ball itself, exactly: ``A x0 + b -/+ eps ||a_i||_2`` per pre-activation (Cauchy-Schwarz, attained
  when the box constraint is inactive), intersected with its interval bound on the enclosing box. The
  rest of the network is bounded by CROWN from that box of pre-activations (after the ReLU). Sound:
  every point of the ball maps into the pre-activation box.

The margin must exceed the verifier's numerical tolerance (``robustlib.bounds.intervals.margin_tolerance``), as
for every certificate in this project. Computed in float64 on a copy of the network.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from robustlib.bounds.intervals import input_box, layer_bounds, margin_lower_bounds, to_sequential
from robustlib.bounds.tolerance import margin_tolerance
from robustlib.threat import ThreatModel


def _first_block(net: nn.Sequential) -> int:
    """Index of the first ReLU; every layer before it must be affine (no max-pool)."""
    for i, layer in enumerate(net):
        if isinstance(layer, nn.ReLU):
            return i
        if isinstance(layer, nn.MaxPool2d):
            raise NotImplementedError("L2 ball bounds need an affine block before the first ReLU, found MaxPool2d")
    raise NotImplementedError("the network has no ReLU")


def affine_row_norms(block: nn.Sequential, in_shape: tuple[int, ...]) -> Tensor:
    """L2 norms of the rows of the linear part ``A`` of an affine ``block`` (shape of its output, float64),
    computed exactly from its columns ``A e_k = block(e_k) - block(0)``."""
    n = int(torch.tensor(in_shape).prod())
    eye = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    with torch.no_grad():
        zero = block(torch.zeros(1, *in_shape, dtype=torch.float64))
        sq = torch.zeros_like(zero[0])
        for s in range(0, n, 512):
            sq += ((block(eye[s:s + 512]) - zero) ** 2).sum(0)
    return sq.sqrt()


def _l2_preactivation_box(block: nn.Sequential, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Bounds of ``block(x')`` over ``||x' - x||_2 <= eps`` (and ``[0, 1]``): exact ball bounds
    intersected with interval bounds on the enclosing box."""
    norms = affine_row_norms(block, tuple(x.shape[1:]))
    with torch.no_grad():
        centre = block(x)
    lo_box, hi_box = input_box(x, eps, "l2")
    _, (lo_ibp, hi_ibp) = layer_bounds(block, lo_box, hi_box, "interval")
    return torch.maximum(centre - eps * norms, lo_ibp), torch.minimum(centre + eps * norms, hi_ibp)


def certified_in_ball(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
    """Per-example certificate (BoolTensor on ``x.device``): the proven lower bound of ``z_y - z_j``
    over the threat ball exceeds the numerical tolerance for every ``j != y`` (module notes)."""
    net = copy.deepcopy(to_sequential(model)).double().eval()
    xd, yd = x.detach().double().cpu(), y.detach().cpu()
    if threat.norm == "linf":
        lower, upper = input_box(xd, threat.eps, "linf")
    elif threat.norm == "l2":
        r = _first_block(net)
        lo, hi = _l2_preactivation_box(net[:r], xd, threat.eps)
        net = net[r + 1:]
        lower, upper = lo.clamp(min=0), hi.clamp(min=0)  # through the first ReLU (monotone)
    else:
        raise ValueError(f"no ball certificate for norm {threat.norm!r}")
    with torch.no_grad():
        m, act = margin_lower_bounds(net, lower, upper, yd, "linear")
        tol = margin_tolerance(net, lower, upper, act).tol
    return (m > tol.unsqueeze(1)).all(1).to(x.device)
