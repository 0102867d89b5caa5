"""StAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018).

Every pixel ``p`` is resampled at ``p + f_p`` by bilinear interpolation (eq. 1), ``f`` a flow field in
pixels. The original paper penalizes the flow's total-variation-like smoothness loss
``L_flow(f) = sum_p sum_{q in N(p)} ||f_p - f_q||_2`` (eq. 4, 4-neighbourhood, without the small
constant); here, as in the constrained evaluations of Laidlaw et al. (2021), it is a budget:
``L_flow(f) / (H W) <= eps`` (mean over pixels, so budgets compare across image sizes), together with
``max |f| <= max_flow`` pixels (a smoothness budget alone would allow any global translation). The
flow is found by sign-gradient ascent on the margin loss; the smoothness budget is enforced by
scaling the flow down (``L_flow`` is 1-homogeneous), so every returned flow obeys both budgets.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlib.attacks.common import NotApplicable, check_count, check_inputs, eval_mode
from robustlib.attacks.perceptual.optimize import ascend_params


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of ``x`` (B, C, H, W) at ``(i + flow[:, 0], j + flow[:, 1])`` (rows, cols), with
    coordinates clamped to the image (edge replication). Zero flow is exactly the identity, and an
    integer flow is an exact shift."""
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + flow[:, 0]
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + flow[:, 1]
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    r0, c0 = rows.detach().floor(), cols.detach().floor()
    wr, wc = rows - r0, cols - c0  # in [0, 1); gradients flow to the flow through these weights
    r0, c0 = r0.long(), c0.long()
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)
    flat = x.reshape(b, c, h * w)

    def gather(r: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
        idx = (r * w + cc).view(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, idx).view(b, c, h, w)

    wr, wc = wr.unsqueeze(1), wc.unsqueeze(1)
    return ((1 - wr) * (1 - wc) * gather(r0, c0) + (1 - wr) * wc * gather(r0, c1)
            + wr * (1 - wc) * gather(r1, c0) + wr * wc * gather(r1, c1))


def flow_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Per-example ``L_flow(f) / (H W)`` (Xiao et al. eq. 4): every ordered pair of 4-neighbours
    counts once per direction, i.e. each undirected edge twice, as in the paper's double sum."""
    dv = (flow[:, :, 1:, :] - flow[:, :, :-1, :]).norm(dim=1).flatten(1).sum(1)
    dh = (flow[:, :, :, 1:] - flow[:, :, :, :-1]).norm(dim=1).flatten(1).sum(1)
    return 2 * (dv + dh) / (flow.shape[2] * flow.shape[3])


def project_flow(flow: torch.Tensor, eps: float, max_flow: float) -> torch.Tensor:
    """Clamp to ``|f| <= max_flow``, then scale each example's flow so ``flow_smoothness <= eps``."""
    flow = flow.clamp(-max_flow, max_flow)
    s = flow_smoothness(flow)
    scale = torch.where(s > eps, eps / s.clamp_min(1e-30), torch.ones_like(s)) * (1 - 1e-6)
    return flow * scale.clamp(max=1.0).view(-1, 1, 1, 1)


def stadv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.05, max_flow: float = 1.0,
          steps: int = 50, step_size: float | None = None, *, return_flow: bool = False):
    """StAdv flow attack (see module docstring). ``eps``: mean smoothness budget; ``max_flow``: pixels;
    step size defaults to ``max_flow / 10`` per sign step. Returns ``x_adv`` (and the flow)."""
    check_inputs(x, y)
    if x.dim() != 4:
        raise NotApplicable(f"StAdv needs images (B, C, H, W), got shape {tuple(x.shape)}")
    if not (eps >= 0 and max_flow >= 0):
        raise ValueError(f"eps and max_flow must be >= 0, got {eps}, {max_flow}")
    steps = check_count("steps", steps, 0)
    step = max_flow / 10 if step_size is None else float(step_size)
    b, _, h, w = x.shape
    flow0 = torch.zeros(b, 2, h, w, device=x.device, dtype=x.dtype)
    with eval_mode(model):
        x_adv, flow = ascend_params(model, x.detach(), y, flow0, warp,
                                    lambda f: project_flow(f, eps, max_flow), steps, step)
    x_adv = x_adv.clamp(0, 1)
    return (x_adv, flow) if return_flow else x_adv
