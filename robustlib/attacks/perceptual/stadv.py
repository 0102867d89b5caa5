"""StAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018) in the bounded form of
Laidlaw, Singla & Feizi (ICLR 2021; perceptual-advex ``StAdvAttack``, mister_ed ``FullSpatial``).

Every pixel is resampled at its position plus a flow ``f`` by bilinear interpolation with zero
padding (``F.grid_sample(x, identity + f)``, ``align_corners=False``). ``f`` is in normalized grid
units (the image spans [-1, 1]; one pixel is ``2 / W`` horizontally, ``2 / H`` vertically). The
threat model bounds EACH flow component, ``|f| <= eps`` elementwise (eps 0.05 = 0.8 pixel on a 32x32
image), with the sampling grid kept inside [-1, 1]. Smoothness is a SOFT penalty: the attack
maximizes ``margin - lambda * L_flow(f)`` with ``L_flow`` Xiao et al.'s eq. 4 over the 4-neighbourhood
(border replicated, ``sqrt(||f_p - f_q||^2 + 1e-10)``), ``lambda = 0.0025 / eps`` (0.05 at eps 0.05),
by Adam (lr 0.01) for 100 iterations, no random start -- all as the reference. Departure (stronger,
labelled): each example keeps its first fooling iterate, else its best one (``optimize.ascend_params``);
the reference returns the last one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.attacks.ascent import AdamStep
from robustlib.attacks.common import (
    AttackCheckError,
    AttackResult,
    NotApplicable,
    check_count,
    check_inputs,
    eval_mode,
    margin_loss,
)
from robustlib.attacks.perceptual.optimize import ascend_params


def identity_grid(b: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """``F.affine_grid``'s identity (``align_corners=False``), shape (B, H, W, 2), last axis (x, y)."""
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=like.dtype, device=like.device)
    return F.affine_grid(theta.expand(b, 2, 3), [b, 1, h, w], align_corners=False)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling with zero padding of ``x`` (B, C, H, W) at ``identity + flow``, ``flow``
    (B, 2, H, W) in normalized grid units (channel 0: rows / y, channel 1: columns / x) -- equal to
    ``F.grid_sample(x, identity_grid + flow, align_corners=False)``, computed in pixel coordinates so
    that zero flow is exactly the identity."""
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + flow[:, 0] * (h / 2)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + flow[:, 1] * (w / 2)
    r0, c0 = rows.detach().floor(), cols.detach().floor()
    wr, wc = (rows - r0).unsqueeze(1), (cols - c0).unsqueeze(1)  # gradients reach the flow through these
    r0, c0 = r0.long(), c0.long()
    flat = x.reshape(b, c, h * w)

    def tap(r: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
        inside = ((r >= 0) & (r < h) & (cc >= 0) & (cc < w)).unsqueeze(1)
        idx = (r.clamp(0, h - 1) * w + cc.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, idx).view(b, c, h, w) * inside

    return ((1 - wr) * (1 - wc) * tap(r0, c0) + (1 - wr) * wc * tap(r0, c0 + 1)
            + wr * (1 - wc) * tap(r0 + 1, c0) + wr * wc * tap(r0 + 1, c0 + 1))


def flow_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Per-example ``L_flow`` (Xiao et al. eq. 4, as mister_ed's ``stAdv_norm``): for each of the 4
    neighbours q of every pixel p (the border replicated, so an edge pixel's missing neighbour is
    itself), ``sqrt(||f_p - f_q||_2^2 + 1e-10)``, summed; each adjacent pair counts twice."""
    p = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    h, w = flow.shape[-2:]
    total = 0.0
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        q = p[:, :, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
        total = total + ((flow - q).pow(2).sum(1) + 1e-10).sqrt().flatten(1).sum(1)
    return total


def project_flow(flow: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference's projection: keep the sampling grid in [-1, 1], then ``|f| <= eps`` elementwise."""
    b, _, h, w = flow.shape
    ident = identity_grid(b, h, w, flow).permute(0, 3, 1, 2).flip(1)  # (B, 2, H, W): (y, x)
    flow = (ident + flow).clamp(-1, 1) - ident
    return flow.clamp(-eps, eps)


def in_stadv_set(x: torch.Tensor, x_adv: torch.Tensor, flow: torch.Tensor, eps: float) -> torch.Tensor:
    """Per example: ``flow`` obeys the bound and ``x_adv`` is ``warp(x, flow)`` (float tolerance)."""
    ok_flow = (flow.abs() <= eps * (1 + 1e-6)).flatten(1).all(1)
    ok_img = ((warp(x, flow) - x_adv).abs() <= 1e-5).flatten(1).all(1)
    return ok_flow & ok_img


def stadv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.05, steps: int = 100,
          lr: float = 0.01, smoothness: float | None = None) -> AttackResult:
    """StAdv with per-component flow bound ``eps`` (see module docstring); ``smoothness`` is lambda
    (default the reference's ``0.0025 / eps``). ``info["flow"]``: the flow."""
    check_inputs(x, y)
    if x.dim() != 4:
        raise NotApplicable(f"StAdv needs images (B, C, H, W), got shape {tuple(x.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    steps = check_count("steps", steps, 0)
    lam = 0.0025 / eps if smoothness is None else float(smoothness)
    b, _, h, w = x.shape

    def objective(logits: torch.Tensor, yy: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return margin_loss(logits, yy) - lam * flow_smoothness(flow)

    with eval_mode(model):
        x_adv, flow = ascend_params(model, x.detach(), y, x.new_zeros(b, 2, h, w), warp,
                                    lambda f: project_flow(f, eps), steps, AdamStep(lr), objective)
    if not bool(in_stadv_set(x, x_adv, flow, eps).all()):
        raise AttackCheckError("threat_set", "StAdv returned a point outside its threat set")
    return AttackResult(x_adv, {"flow": flow})
