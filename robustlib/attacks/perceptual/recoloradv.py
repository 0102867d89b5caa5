"""ReColorAdv: functional adversarial attack on colours (Laidlaw & Feizi, NeurIPS 2019), as
evaluated by Laidlaw, Singla & Feizi (2021; perceptual-advex ``ReColorAdvAttack`` with the
``recoloradv`` package's CIELUV ``FullSpatial`` colour transform).

The perturbation is ONE colour-to-colour function per image, applied to every pixel in CIELUV:
colours are mapped sRGB -> XYZ (D65) -> CIELUV, normalized to ``[L / 100, (u + 100) / 200,
(v + 100) / 200]`` (``rgb_to_luv``); the function is ``c -> c + g(c)`` with ``g`` the trilinear
interpolation of offsets stored on a 16 x 32 x 32 lattice over (L, u, v) (coordinates beyond the
lattice take its edge values). The threat model bounds every lattice offset elementwise, ``|g| <=
eps`` (0.06) in normalized-LUV units, with lattice values kept in [0, 1]. The attack maximizes
``margin - lambda * smoothness`` (``lambda = 0.0036 / eps``, 0.06 at eps 0.06; smoothness = sum over
the 3 lattice axes, both directions, ends replicated, of ``sqrt(||g_p - g_q||^2 + 1e-10)``) by Adam
(lr 0.001) for 100 iterations, no random start.

Departures (labelled): (1) the image is ``x + to_rgb(c + g(c)) - to_rgb(c)`` instead of
``to_rgb(c + g(c))``: the same function up to the float round trip of the colour conversion (about
1e-6), and zero change reproduces ``x`` exactly; (2) lattice vertices are not projected into the sRGB
gamut (the reference does so before the L-inf clamp); out-of-gamut results are clipped by ``to_rgb``,
as in the reference; (3) first fooling, else best, iterate per example (``optimize.ascend_params``).
"""

from __future__ import annotations

import torch
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

RESOLUTION = (16, 32, 32)
_RGB_TO_XYZ = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9504))
_XYZ_TO_RGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
_UP_WHITE, _VP_WHITE, _EPS = 0.1978, 0.4683, 1e-10


def _mix(m, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("kc,bchw->bkhw", torch.tensor(m, dtype=x.dtype, device=x.device), x)


def rgb_to_luv(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> normalized CIELUV ``[L/100, (u+100)/200, (v+100)/200]`` (recoloradv's
    ``CIELUVColorSpace.from_rgb``: sRGB gamma, the sRGB/D65 XYZ matrix, white u' 0.1978, v' 0.4683)."""
    lin = torch.where(x < 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4)
    xx, yy, zz = _mix(_RGB_TO_XYZ, lin).unbind(1)
    d = xx + 15 * yy + 3 * zz + _EPS
    up, vp = 4 * xx / d, 9 * yy / d
    lum = torch.where(yy < (6 / 29) ** 3, (29 / 3) ** 3 * yy, 116 * yy.clamp_min(_EPS) ** (1 / 3) - 16)
    u, v = 13 * lum * (up - _UP_WHITE), 13 * lum * (vp - _VP_WHITE)
    return torch.stack([lum / 100, (u + 100) / 200, (v + 100) / 200], 1)


def luv_to_rgb(c: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_luv`` (recoloradv's ``to_rgb``: XYZ clipped to [0, 1.1], sRGB to [0, 1])."""
    lum, u, v = c[:, 0] * 100, c[:, 1] * 200 - 100, c[:, 2] * 200 - 100
    up, vp = u / (13 * lum + _EPS) + _UP_WHITE, v / (13 * lum + _EPS) + _VP_WHITE
    yy = torch.where(lum <= 8, lum * (3 / 29) ** 3, ((lum + 16) / 116) ** 3)
    xx = 9 * yy * up / (4 * vp + _EPS)
    zz = yy * (12 - 3 * up - 20 * vp) / (4 * vp + _EPS)
    lin = _mix(_XYZ_TO_RGB, torch.stack([xx, yy, zz], 1).clamp(0, 1.1))
    rgb = torch.where(lin < 0.0031308, 12.92 * lin, 1.055 * lin.clamp_min(1e-10) ** (1 / 2.4) - 0.055)
    return rgb.clamp(0, 1)


def lattice_identity(resolution: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
    """The identity lattice (R0, R1, R2, 3): vertex (i, j, k) holds ``(i/(R0-1), j/(R1-1), k/(R2-1))``."""
    axes = [torch.linspace(0, 1, r, dtype=like.dtype, device=like.device) for r in resolution]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)


def interpolate(c: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation at every pixel colour ``c`` (B, 3, H, W; unit-cube coordinates, clipped
    to the cube) of per-example lattice values (B, R0, R1, R2, 3). Reproduces affine maps exactly."""
    b, _, h, w = c.shape
    res = lattice.shape[1:4]
    scale = torch.tensor([r - 1 for r in res], dtype=c.dtype, device=c.device)
    u = c.permute(0, 2, 3, 1).reshape(b, h * w, 3).clamp(0, 1) * scale
    i0 = torch.minimum(u.detach().floor(), scale - 1).clamp_min(0)
    frac = u - i0
    i0 = i0.long()
    table = lattice.reshape(b, -1, 3)
    out = torch.zeros(b, h * w, 3, device=c.device, dtype=lattice.dtype)
    for d0 in (0, 1):
        for d1 in (0, 1):
            for d2 in (0, 1):
                idx = ((i0[..., 0] + d0) * res[1] + (i0[..., 1] + d1)) * res[2] + (i0[..., 2] + d2)
                wgt = ((frac[..., 0] if d0 else 1 - frac[..., 0]) * (frac[..., 1] if d1 else 1 - frac[..., 1])
                       * (frac[..., 2] if d2 else 1 - frac[..., 2]))
                out = out + wgt.unsqueeze(-1) * table.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3))
    return out.reshape(b, h, w, 3).permute(0, 3, 1, 2)


def apply_color_function(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The recoloured image ``x + to_rgb(c + g(c)) - to_rgb(c)``, ``c = rgb_to_luv(x)``, ``g`` the
    interpolated ``offsets`` (B, R0, R1, R2, 3); clipped to [0, 1]. Zero offsets return ``x`` exactly."""
    c = rgb_to_luv(x)
    return (x + (luv_to_rgb(c + interpolate(c, offsets)) - luv_to_rgb(c))).clamp(0, 1)


def lattice_smoothness(offsets: torch.Tensor) -> torch.Tensor:
    """Per-example smoothness of the lattice offsets (recoloradv ``norms.smoothness``): over the 3
    lattice axes and both directions (ends replicated), ``sum sqrt(||g_p - g_q||_2^2 + 1e-10)``.
    Both directions see the same adjacent pairs, and a replicated end contributes ``sqrt(1e-10)``, so
    this is ``2 * sum over adjacent pairs + 2 * (number of end vertices) * 1e-5``."""
    total, ends = 0.0, 0
    for axis in (1, 2, 3):
        n = offsets.shape[axis]
        diff = offsets.narrow(axis, 1, n - 1) - offsets.narrow(axis, 0, n - 1)
        total = total + (diff.pow(2).sum(-1) + 1e-10).sqrt().flatten(1).sum(1)
        ends += offsets[0, ..., 0].numel() // n
    return 2 * total + 2 * ends * 1e-5


def project_offsets(offsets: torch.Tensor, identity: torch.Tensor, eps: float) -> torch.Tensor:
    """Lattice values in [0, 1], then ``|offset| <= eps`` elementwise (the reference's projection)."""
    return ((identity + offsets).clamp(0, 1) - identity).clamp(-eps, eps)


def recoloradv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.06, steps: int = 100,
               lr: float = 0.001, smoothness: float | None = None,
               resolution: tuple[int, int, int] = RESOLUTION) -> AttackResult:
    """ReColorAdv in CIELUV (see module docstring); ``smoothness`` is lambda (default the reference's
    ``0.0036 / eps``). ``info["offsets"]``: the lattice offsets."""
    check_inputs(x, y)
    if x.dim() != 4 or x.shape[1] != 3:
        raise NotApplicable(f"ReColorAdv perturbs colours and needs 3-channel RGB images; got shape "
                            f"{tuple(x.shape)} (n/a for grayscale data such as MNIST)")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    steps = check_count("steps", steps, 0)
    resolution = tuple(check_count("resolution", r, 2) for r in resolution)
    lam = 0.0036 / eps if smoothness is None else float(smoothness)
    identity = lattice_identity(resolution, x)

    def objective(logits: torch.Tensor, yy: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        return margin_loss(logits, yy) - lam * lattice_smoothness(off)

    with eval_mode(model):
        x_adv, offsets = ascend_params(model, x.detach(), y, x.new_zeros(x.shape[0], *resolution, 3),
                                       apply_color_function, lambda o: project_offsets(o, identity, eps),
                                       steps, AdamStep(lr), objective)
    ok = (offsets.abs() <= eps * (1 + 1e-6)).flatten(1).all(1) & \
        ((apply_color_function(x, offsets) - x_adv).abs() <= 1e-5).flatten(1).all(1)
    if not bool(ok.all()):
        raise AttackCheckError("threat_set", "ReColorAdv returned a point outside its threat set")
    return AttackResult(x_adv, {"offsets": offsets})
