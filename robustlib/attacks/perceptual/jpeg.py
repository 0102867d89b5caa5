"""JPEG attack (Kang et al., "Testing robustness against unforeseen adversaries", 2019): an L-inf
bounded perturbation of the image's JPEG coefficients.

The image is converted to YCbCr (JPEG's full-range BT.601; a 1-channel image is its own luma), split
into 8x8 blocks (zero-padded to a multiple of 8), transformed by the orthonormal 2-D DCT-II and
divided by the standard JPEG quality-50 quantization tables (luma for Y, chroma for Cb/Cr) on the
0-255 scale, without rounding. The attack adds ``delta`` with ``||delta||_inf <= eps`` in these
coefficient units and decodes: ``x_adv = clip01(decode(encode(x) + delta))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlib.attacks.common import NotApplicable, check_count, check_inputs, eval_mode
from robustlib.attacks.perceptual.optimize import ascend_params

LUMA_Q = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55), (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62), (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_Q = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99), (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99), *[(99,) * 8] * 4,
)
_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def dct_matrix(n: int = 8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (rows = frequencies): ``D @ v`` is scipy's ``dct(v, norm='ortho')``."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.to(dtype)


def block_dct(x: torch.Tensor, inverse: bool = False, n: int = 8) -> torch.Tensor:
    """2-D DCT-II (or its inverse) of every ``n x n`` block of ``x`` (..., H, W), H and W multiples of n."""
    *lead, h, w = x.shape
    if h % n or w % n:
        raise ValueError(f"block_dct needs H, W multiples of {n}, got {h}x{w}")
    d = dct_matrix(n, x.dtype).to(x.device)
    if inverse:
        d = d.T
    blocks = x.reshape(*lead, h // n, n, w // n, n)
    out = torch.einsum("ki,...aibj,lj->...akbl", d, blocks, d)
    return out.reshape(*lead, h, w)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(_YCBCR, dtype=x.dtype, device=x.device)
    off = torch.tensor([0.0, 0.5, 0.5], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.einsum("kc,bchw->bkhw", m, x) + off


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    m = torch.linalg.inv(torch.tensor(_YCBCR, dtype=torch.float64)).to(x.dtype).to(x.device)
    off = torch.tensor([0.0, 0.5, 0.5], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.einsum("kc,bchw->bkhw", m, x - off)


def _qtable(channels: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    tabs = [LUMA_Q] + [CHROMA_Q] * (channels - 1)
    q = torch.tensor(tabs, dtype=dtype, device=device) / 255.0  # quantization steps on the [0, 1] scale
    return q.repeat(1, h // 8, w // 8)  # (C, H, W), tiled per block


def jpeg_decode_delta(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``decode(encode(x) + delta)`` without clipping; ``delta`` (B, C, H8, W8) in quantization units on
    the zero-padded grid (H8, W8 = H, W rounded up to multiples of 8). The transform is linear, so
    this is ``x`` plus the decoded ``delta``."""
    b, c, h, w = x.shape
    h8, w8 = delta.shape[-2:]
    spatial = block_dct(delta * _qtable(c, h8, w8, x.dtype, x.device), inverse=True)[..., :h, :w]
    return x + (ycbcr_to_rgb(spatial + torch.tensor([0.0, 0.5, 0.5], dtype=x.dtype, device=x.device
                                                    ).view(1, 3, 1, 1)) if c == 3 else spatial)


def jpeg_encode(x: torch.Tensor) -> torch.Tensor:
    """JPEG coefficients (quantization units, unrounded) of ``x`` (B, 1 or 3, H, W), zero-padded to 8."""
    b, c, h, w = x.shape
    h8, w8 = -(-h // 8) * 8, -(-w // 8) * 8
    ch = rgb_to_ycbcr(x) if c == 3 else x
    ch = torch.nn.functional.pad(ch, (0, w8 - w, 0, h8 - h))
    return block_dct(ch) / _qtable(c, h8, w8, x.dtype, x.device)


def jpeg(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.25, steps: int = 50,
         step_size: float | None = None, *, return_delta: bool = False):
    """JPEG-coefficient attack (see module docstring): sign-gradient ascent of the margin loss over
    ``delta``, clamped to ``[-eps, eps]``; step defaults to ``eps / 10``."""
    check_inputs(x, y)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise NotApplicable(f"the JPEG attack needs 1- or 3-channel images, got shape {tuple(x.shape)}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    steps = check_count("steps", steps, 0)
    step = eps / 10 if step_size is None else float(step_size)
    b, c, h, w = x.shape
    delta0 = torch.zeros(b, c, -(-h // 8) * 8, -(-w // 8) * 8, device=x.device, dtype=x.dtype)

    def render(xx: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return jpeg_decode_delta(xx, d).clamp(0, 1)

    with eval_mode(model):
        x_adv, delta = ascend_params(model, x.detach(), y, delta0, render, lambda d: d.clamp(-eps, eps),
                                     steps, step)
    return (x_adv, delta) if return_delta else x_adv
