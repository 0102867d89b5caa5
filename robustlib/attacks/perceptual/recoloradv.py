"""ReColorAdv: functional adversarial attack on colours (Laidlaw & Feizi, NeurIPS 2019).

The perturbation is ONE colour-to-colour function applied to every pixel, ``c -> c + g(c)``, where
``g`` is trilinear interpolation of offsets stored on a ``grid x grid x grid`` lattice over the RGB
cube (the paper's piecewise-trilinear function class, sec. 3). The threat model bounds every offset,
``||g(lattice point)||_inf <= eps``, so each pixel's colour moves by at most ``eps`` per channel (a
convex combination of bounded offsets). This implementation works in RGB; the paper's CIELUV
variant is not implemented. It needs 3 colour channels: grayscale input raises ``NotApplicable``.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlib.attacks.common import NotApplicable, check_count, check_inputs, eval_mode
from robustlib.attacks.perceptual.optimize import ascend_params


def apply_color_function(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``x + g(x)`` per pixel, ``g`` the trilinear interpolation of ``offsets`` (B, G, G, G, 3) over the
    RGB cube [0, 1]^3 (lattice index order R, G, B). Reproduces affine colour maps exactly."""
    b, c, h, w = x.shape
    grid = offsets.shape[1]
    u = x.permute(0, 2, 3, 1).reshape(b, h * w, 3) * (grid - 1)
    i0 = u.detach().floor().clamp(0, grid - 2)
    frac = u - i0
    i0 = i0.long()
    table = offsets.reshape(b, grid ** 3, 3)
    out = torch.zeros(b, h * w, 3, device=x.device, dtype=x.dtype)
    for dr in (0, 1):
        for dg in (0, 1):
            for db in (0, 1):
                idx = ((i0[..., 0] + dr) * grid + (i0[..., 1] + dg)) * grid + (i0[..., 2] + db)
                wgt = ((frac[..., 0] if dr else 1 - frac[..., 0]) * (frac[..., 1] if dg else 1 - frac[..., 1])
                       * (frac[..., 2] if db else 1 - frac[..., 2]))
                out = out + wgt.unsqueeze(-1) * table.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3))
    return x + out.reshape(b, h, w, 3).permute(0, 3, 1, 2)


def recoloradv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.06, grid: int = 12,
               steps: int = 50, step_size: float | None = None, *, return_offsets: bool = False):
    """ReColorAdv in RGB (see module docstring): sign-gradient ascent of the margin loss over the
    lattice offsets, clamped to ``[-eps, eps]``; step defaults to ``eps / 10``. Returns ``x_adv``
    (clipped to [0, 1]) and optionally the offsets."""
    check_inputs(x, y)
    if x.dim() != 4 or x.shape[1] != 3:
        raise NotApplicable(f"ReColorAdv perturbs colours and needs 3-channel RGB images; got shape "
                            f"{tuple(x.shape)} (n/a for grayscale data such as MNIST)")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    grid = check_count("grid", grid, 2)
    steps = check_count("steps", steps, 0)
    step = eps / 10 if step_size is None else float(step_size)
    theta0 = torch.zeros(x.shape[0], grid, grid, grid, 3, device=x.device, dtype=x.dtype)

    def render(xx: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return apply_color_function(xx, theta).clamp(0, 1)

    with eval_mode(model):
        x_adv, offsets = ascend_params(model, x.detach(), y, theta0, render,
                                       lambda t: t.clamp(-eps, eps), steps, step)
    return (x_adv, offsets) if return_offsets else x_adv
