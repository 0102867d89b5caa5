"""The paper's manifold regularizers: relaxed Hamming, stability, and the dense graph Laplacian.

Jin & Rinard, "Efficient Regularization for Robust Deep ReLU Networks": the sparse (paired x +/- rho)
regularizers of eqs. 10-11, 16-17 and the dense heat-kernel Laplacian over all perturbed points of the
batch (eq. 14) of which they are the sparsification.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from robustlib.regularizers.core import StepContext, Term, register_term

logger = logging.getLogger(__name__)


def hamming(z_plus: Sequence[torch.Tensor], z_minus: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """Relaxed Hamming regularizer (Jin & Rinard eqs. 10, 11, 17).

    Per ReLU, ``H_alpha(z+, z-) = 1/2 |tanh(alpha z+) - tanh(alpha z-)|`` (-> Hamming distance of the
    activation patterns as alpha -> inf); per layer j, ``d_j = (1/m_j) sum_k H_alpha`` over its m_j
    units; returns the mean over examples and layers of ``d_j ** 2``.
    """
    if len(z_plus) != len(z_minus) or not z_plus:
        raise ValueError("hamming needs two equal-length, non-empty lists of pre-activations")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    # 1/2 (tanh(a) - tanh(b)) = sigmoid(2a) - sigmoid(2b): the same value, and torch's CPU sigmoid is
    # several times faster than its tanh (this is on the training step's critical path).
    per_layer = [_LayerHamming.apply(zp, zm, float(alpha)) for zp, zm in zip(z_plus, z_minus, strict=True)]
    return torch.stack(per_layer, 1).pow(2).mean()


class _LayerHamming(torch.autograd.Function):
    """Per example, ``d = mean_k |sigmoid(2 a z+_k) - sigmoid(2 a z-_k)|`` with a hand-written backward
    (5 elementwise kernels instead of autograd's ~10): this is the training step's overhead over three
    plain passes. ``tests/test_regularizers.py`` checks value and gradients against plain autograd."""

    @staticmethod
    def forward(ctx, zp: torch.Tensor, zm: torch.Tensor, alpha: float) -> torch.Tensor:
        sp = torch.sigmoid(zp.flatten(1) * (2 * alpha))
        sm = torch.sigmoid(zm.flatten(1) * (2 * alpha))
        diff = sp - sm
        ctx.save_for_backward(sp, sm, diff)
        ctx.alpha, ctx.shape = alpha, zp.shape
        return diff.abs().mean(1)

    @staticmethod
    def backward(ctx, grad_d: torch.Tensor):
        sp, sm, diff = ctx.saved_tensors
        g = diff.sign() * (grad_d * (2 * ctx.alpha / diff.shape[1]))[:, None]
        grad_p = torch.ops.aten.sigmoid_backward(g, sp).view(ctx.shape)
        grad_m = torch.ops.aten.sigmoid_backward(g.neg_(), sm).view(ctx.shape)
        return grad_p, grad_m, None


def stability(out_plus: torch.Tensor, out_minus: torch.Tensor) -> torch.Tensor:
    """Stability regularizer (Jin & Rinard eq. 16): batch mean of ``||f(x+rho) - f(x-rho)||_2^2``."""
    return (out_plus - out_minus).flatten(1).pow(2).sum(1).mean()


def laplacian_embedding(probs: torch.Tensor, preacts: Sequence[torch.Tensor], alpha: float,
                        output_scale: float = 1.0, pattern_scale: float = 1.0) -> torch.Tensor:
    """The vector ``g(x)`` the dense Laplacian smooths: ``[output_scale * f(x), pattern_scale * P(x)]``
    with ``P(x) = [tanh(alpha z_j) / (2 sqrt(m_j L))]_j`` (up to a constant offset, computed as
    ``sigmoid(2 alpha z_j) / sqrt(m_j L)``) over the L ReLU layers of m_j units, so that
    ``||P(x) - P(x')||^2`` is the mean over layers and units of the squared relaxed Hamming distance
    ``H_alpha`` (eq. 11). Shape ``(N, D)``."""
    n_layers = len(preacts)
    parts = [output_scale * probs.flatten(1)]
    for z in preacts:
        m = z[0].numel()
        # tanh(a z) / 2 = sigmoid(2 a z) - 1/2; the constant offset cancels in every difference
        parts.append(torch.sigmoid(2 * alpha * z.flatten(1)) * (pattern_scale / (m * n_layers) ** 0.5))
    return torch.cat(parts, 1)


def heat_kernel(points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Heat-kernel weights ``W_ij = exp(-||x_i - x_j||^2 / s)`` between all rows of ``points`` (N, ...), in
    float64 (the weights are constants: no gradient flows through them)."""
    flat = points.detach().flatten(1).double()
    d2 = torch.cdist(flat, flat).pow(2)
    return torch.exp(-d2 / bandwidth)


def dense_laplacian(points: torch.Tensor, embedding: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Dense graph-Laplacian regularizer (Jin & Rinard eq. 14): ``(1/N) sum_ij W_ij ||g_i - g_j||^2``
    over all ordered pairs of the N ``points`` with heat-kernel weights (``heat_kernel``).

    Normalized per point (1/N, not Belkin et al.'s 1/N^2): when only the paired edges x +/- rho carry
    weight w -- the sparse regime -- the value is w times the batch mean of ``||g(x+rho) - g(x-rho)||^2``,
    so its weight is on the scale of the paired (hamming + stability) regularizers' and does not shrink
    with the batch size. Evaluated as ``(2/N) tr(G^T L G)`` with ``L = D - W``: O(N^2 D) without
    forming pair differences.
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    n = points.shape[0]
    if embedding.shape[0] != n:
        raise ValueError(f"{n} points but {embedding.shape[0]} embeddings")
    w = heat_kernel(points, bandwidth).double()
    w.fill_diagonal_(0.0)  # i = j contributes nothing; dropping it avoids a needless cancellation
    # float64: g_i ~ g_j on the heavy (paired) edges, so the expanded form cancels in float32
    g = embedding.flatten(1).double()
    quad = (w.sum(1) * g.pow(2).sum(1)).sum() - (g * (w @ g)).sum()
    return (2.0 * quad / n).to(embedding.dtype)


# ---------------------------------------------------------------------------------------------
# Terms
# ---------------------------------------------------------------------------------------------
@register_term
class Hamming(Term):
    """The relaxed Hamming regularizer between the ReLU patterns at x + rho and x - rho."""

    name = "hamming"
    views = ("plus", "minus")
    needs_preacts = True
    ramp_by_default = True

    def __init__(self, alpha: float = 8.0) -> None:
        if not alpha > 0:
            raise ValueError(f"hamming: alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return hamming(ctx.preacts["plus"], ctx.preacts["minus"], self.alpha)


@register_term
class Stability(Term):
    """The stability regularizer on softmax probabilities (the bounded f of the paper's appendix B)."""

    name = "stability"
    views = ("plus", "minus")
    ramp_by_default = True

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return stability(F.softmax(ctx.logits["plus"], 1), F.softmax(ctx.logits["minus"], 1))


@register_term
class DenseLaplacian(Term):
    """Dense heat-kernel Laplacian (eq. 14) over ALL 2B perturbed points {x_i + rho_i, x_i - rho_i} of
    the batch, on ``g = [output_scale * softmax(f), pattern_scale * P]`` (``laplacian_embedding``).

    ``bandwidth`` s of ``W_ij = exp(-||x_i - x_j||^2 / s)``; ``None`` uses the batch mean of
    ``||(x + rho) - (x - rho)||^2`` (= 4 eps^2 d away from the [0, 1] clip), so each paired edge weighs
    about exp(-1). An edge between perturbed copies of two different training points has squared length
    about ``||x_i - x_j||^2 + 2 eps^2 d`` (independent random corners), so it weighs little only when
    the training points are farther apart than the ball -- the regime in which the paired x +/- rho
    form (hamming + stability) is the Laplacian's sparsification (``robustlib.neighbours`` measures it).
    """

    name = "dense_laplacian"
    views = ("plus", "minus")
    needs_preacts = True
    ramp_by_default = True

    def __init__(self, bandwidth: float | None = None, alpha: float = 8.0, output_scale: float = 1.0,
                 pattern_scale: float = 1.0) -> None:
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"dense_laplacian: bandwidth must be > 0 (or None), got {bandwidth}")
        if not alpha > 0:
            raise ValueError(f"dense_laplacian: alpha must be > 0, got {alpha}")
        if output_scale < 0 or pattern_scale < 0:
            raise ValueError(f"dense_laplacian: scales must be >= 0, got {output_scale}, {pattern_scale}")
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        self.alpha = float(alpha)
        self.output_scale, self.pattern_scale = float(output_scale), float(pattern_scale)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        points = torch.cat([ctx.inputs["plus"], ctx.inputs["minus"]])
        s = self.bandwidth
        if s is None:
            s = float((ctx.inputs["plus"] - ctx.inputs["minus"]).flatten(1).pow(2).sum(1).mean())
            s = max(s, 1e-12)
        probs = F.softmax(torch.cat([ctx.logits["plus"], ctx.logits["minus"]]), 1)
        pre = [torch.cat([zp, zm]) for zp, zm in zip(ctx.preacts["plus"], ctx.preacts["minus"], strict=True)]
        g = laplacian_embedding(probs, pre, self.alpha, self.output_scale, self.pattern_scale)
        return dense_laplacian(points, g, s)
