"""The paper's manifold regularizers: relaxed Hamming, stability, and the dense graph Laplacian.

Jin & Rinard, "Efficient Regularization for Robust Deep ReLU Networks": the sparse (paired x +/- rho)
regularizers of eqs. 10-11, 16-17 and the dense heat-kernel Laplacian over all perturbed points of the
batch (eq. 14) of which they are the sparsification.
"""

from __future__ import annotations

import logging
import os
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

    Speed (it is the training step's overhead over three plain passes): ``1/2 (tanh(a) - tanh(b)) =
    sigmoid(2a) - sigmoid(2b)`` (torch's CPU sigmoid is several times faster than its tanh); the whole
    regularizer -- forward and backward -- is compiled into fused kernels by ``torch.compile`` (only
    this function, not the model) for the first shape seen in a process; other shapes (a smaller last
    batch), ``ROBUSTLIB_COMPILE=0`` or a failed compilation use the hand-written autograd function
    ``_LayerHamming``. Both are checked against plain autograd in ``tests/test_regularizers.py``.
    """
    if len(z_plus) != len(z_minus) or not z_plus:
        raise ValueError("hamming needs two equal-length, non-empty lists of pre-activations")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    fn = _compiled_for(z_plus, z_minus, float(alpha))
    if fn is not None:
        try:
            return fn(list(z_plus), list(z_minus), float(alpha))
        except Exception as e:  # noqa: BLE001 - no compiler, unsupported platform: fall back, say so once
            _COMPILED["failed"] = True
            logger.warning("torch.compile of the Hamming regularizer failed (%s: %s); using the eager "
                           "autograd function", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    per_layer = [_LayerHamming.apply(zp, zm, float(alpha)) for zp, zm in zip(z_plus, z_minus, strict=True)]
    return torch.stack(per_layer, 1).pow(2).mean()


def hamming_reference(z_plus: Sequence[torch.Tensor], z_minus: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """``hamming`` in plain torch operations (autograd does the backward): what ``torch.compile`` fuses."""
    per_layer = [(torch.sigmoid(zp.flatten(1) * (2 * alpha)) - torch.sigmoid(zm.flatten(1) * (2 * alpha))).abs().mean(1)
                 for zp, zm in zip(z_plus, z_minus, strict=True)]
    return torch.stack(per_layer, 1).pow(2).mean()


# Eq. 17 is garbled in the only text we have ("N X m X mr|X H ... |2" over "n mj 2"). Its plausible readings, as
# per-example, per-layer values d_j of the pre-activations' relaxed distances H_k = H_alpha(z+_k, z-_k) (eq. 11) over
# the layer's m_j units; every reading then takes the mean over the n layers and the N examples (eq. 17's 1/N, 1/n).
# The first is the default: the committed runs use it. Measured size against it on SmallCNN / CIFAR-10 at
# initialisation: benchmarks/results/hamming_readings.md.
READINGS: dict[str, str] = {
    "mean_sq": "((1/m_j) sum_k H_k)^2",  # the default: each pair normalised "to a value between 0 and 1" (sec. 5.4)
    "sum_sq_over_m": "(1/m_j) (sum_k H_k)^2",  # the literal typography: 1/m_j outside |sum_k H|^2 (in [0, m_j])
    "mean_of_sq": "(1/m_j) sum_k H_k^2",  # the square inside the sum (in [0, 1])
    "sum_of_sq_over_m2": "(1/m_j^2) sum_k H_k^2",  # the stray "2" under m_j as an exponent (in [0, 1/m_j])
    "mean": "(1/m_j) sum_k H_k",  # no square: the relaxed Hamming distance itself, d_H rather than d_H^2 (eq. 10)
}
DEFAULT_READING = "mean_sq"


def hamming_reading(z_plus: Sequence[torch.Tensor], z_minus: Sequence[torch.Tensor], alpha: float,
                    reading: str = DEFAULT_READING) -> torch.Tensor:
    """The Hamming regularizer (eqs. 11, 17) under one reading of eq. 17 (``READINGS``): the mean over examples
    and layers of the reading's per-layer value. ``"mean_sq"`` (the default) IS ``hamming`` -- the same call,
    bitwise; the others are plain torch operations (autograd does the backward; no compiled path)."""
    if reading not in READINGS:
        raise ValueError(f"hamming: unknown reading {reading!r} of eq. 17; expected one of {list(READINGS)}")
    if reading == DEFAULT_READING:
        return hamming(z_plus, z_minus, alpha)
    if len(z_plus) != len(z_minus) or not z_plus:
        raise ValueError("hamming needs two equal-length, non-empty lists of pre-activations")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    per_layer = []
    for zp, zm in zip(z_plus, z_minus, strict=True):
        h = (torch.sigmoid(zp.flatten(1) * (2 * alpha)) - torch.sigmoid(zm.flatten(1) * (2 * alpha))).abs()  # H_k
        m = h.shape[1]
        if reading == "sum_sq_over_m":
            d = h.sum(1).pow(2) / m
        elif reading == "mean_of_sq":
            d = h.pow(2).mean(1)
        elif reading == "sum_of_sq_over_m2":
            d = h.pow(2).sum(1) / (m * m)
        else:  # "mean"
            d = h.mean(1)
        per_layer.append(d)
    return torch.stack(per_layer, 1).mean()


_COMPILED: dict = {"fn": None, "signature": None, "failed": False}


def _compiled_for(z_plus, z_minus, alpha: float):
    """The compiled ``hamming_reference`` if it may serve these inputs, else None (see ``hamming``)."""
    if _COMPILED["failed"] or os.environ.get("ROBUSTLIB_COMPILE", "1") == "0" or not hasattr(torch, "compile"):
        return None
    sig = (alpha, tuple((tuple(z.shape), z.dtype, z.device.type) for z in (*z_plus, *z_minus)))
    if _COMPILED["signature"] is None:
        _COMPILED["signature"] = sig
        _COMPILED["fn"] = torch.compile(hamming_reference, dynamic=False)
    return _COMPILED["fn"] if _COMPILED["signature"] == sig else None


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


OUTPUTS = ("logits", "softmax")
REDUCTIONS = ("sum", "mean")


def stability(out_plus: torch.Tensor, out_minus: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Stability regularizer (Jin & Rinard eq. 16): ``sum_i ||f(x_i+rho_i) - f(x_i-rho_i)||_2^2`` over the
    batch (``reduction="sum"``, the paper's) or its batch mean (``"mean"``)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"stability: unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    total = (out_plus - out_minus).pow(2).sum()
    return total if reduction == "sum" else total / out_plus.shape[0]


def _output(logits: torch.Tensor, output: str) -> torch.Tensor:
    return logits if output == "logits" else F.softmax(logits, 1)


def heat_kernel(points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Heat-kernel weights ``W_ij = exp(-||x_i - x_j||^2 / s)`` between all rows of ``points`` (N, ...), in
    float64 (the weights are constants: no gradient flows through them)."""
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    flat = points.detach().flatten(1).double()
    d2 = torch.cdist(flat, flat).pow(2)
    return torch.exp(-d2 / bandwidth)


def pairwise_hamming(preacts: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """``(N, N)`` matrix of the paper's per-pair Hamming loss (eqs. 10-11, 17 for one pair):
    ``L_H(i, j) = mean_layers ( (1/m_l) sum_k H_alpha(z_ik, z_jk) )^2`` with
    ``H_alpha(z, z') = 1/2 |tanh(alpha z) - tanh(alpha z')| = |sigmoid(2 alpha z) - sigmoid(2 alpha z')|``."""
    if not preacts:
        raise ValueError("pairwise_hamming needs at least one layer of pre-activations")
    total = None
    for z in preacts:
        a = torch.sigmoid(z.flatten(1) * (2 * alpha))
        d = torch.cdist(a, a, p=1) / a.shape[1]
        total = d.pow(2) if total is None else total + d.pow(2)
    return total / len(preacts)


def dense_laplacian(weights: torch.Tensor, outputs: torch.Tensor, preacts: Sequence[torch.Tensor], alpha: float,
                    gamma_s: float, gamma_h: float, n_examples: int, reduction: str = "sum") -> torch.Tensor:
    """Dense graph-Laplacian regularizer (Jin & Rinard eqs. 12-14) over N points:
    ``1/2 sum_{i != j} W_ij |g(x_i) - g(x_j)|^2`` with edge weights ``weights`` (N, N) (the heat kernel,
    ``heat_kernel``, in the term; constants: no gradient flows through them) and
    ``|g_i - g_j|^2 = gamma_S L_S(i, j) / r + gamma_H L_H(i, j) / n_examples`` (eq. 13), where
    ``L_S(i, j) = |f_i - f_j|^2`` (eq. 9) and ``L_H`` the per-pair Hamming loss with eq. 17's per-layer
    normalisation (``pairwise_hamming``).

    The normalisation follows the sparse objective it generalises: the output part is reduced over the
    batch as the stability term (``reduction``: ``"sum"``, eq. 16, r = 1; ``"mean"``, r = n_examples) and
    the pattern part is a batch mean (eq. 17); the 1/2 counts each unordered pair once. Hence, when only
    the n_examples paired edges (x_i + rho_i, x_i - rho_i) carry weight 1, the value is exactly
    ``gamma_S * stability + gamma_H * hamming`` (``tests/test_regularizers.py`` checks this).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    n = weights.shape[0]
    if weights.shape != (n, n) or outputs.shape[0] != n or any(z.shape[0] != n for z in preacts):
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not match {outputs.shape[0]} outputs and "
                         f"pre-activations of sizes {[z.shape[0] for z in preacts]}")
    w = weights.detach().to(outputs.dtype).clone()
    w.fill_diagonal_(0.0)  # i = j contributes nothing
    r = 1.0 if reduction == "sum" else float(n_examples)
    # output part: sum_ij W_ij |f_i - f_j|^2 = 2 (sum_i d_i |f_i|^2 - sum_ij W_ij f_i.f_j), in float64 (f_i ~ f_j on
    # the heavy, paired edges, so the expanded form cancels in float32)
    f = outputs.flatten(1).double()
    wd = w.double()
    out_part = (2.0 * ((wd.sum(1) * f.pow(2).sum(1)).sum() - (f * (wd @ f)).sum())).to(outputs.dtype)
    pat_part = (w * pairwise_hamming(preacts, alpha)).sum()
    return 0.5 * (gamma_s * out_part / r + gamma_h * pat_part / n_examples)


# ---------------------------------------------------------------------------------------------
# Terms
# ---------------------------------------------------------------------------------------------
@register_term
class Hamming(Term):
    """The relaxed Hamming regularizer between the ReLU patterns at x + rho and x - rho (eqs. 11, 17).

    ``reading``: which reading of the garbled eq. 17 (``READINGS``; default ``"mean_sq"``, the committed runs'
    ``hamming``). A run's spec names a reading only when it is not the default, so the report's description of
    the objective (``reporting.tables.describe_objective``) shows it exactly then."""

    name = "hamming"
    views = ("plus", "minus")
    needs_preacts = True
    ramp_by_default = True

    def __init__(self, alpha: float = 8.0, reading: str = DEFAULT_READING) -> None:
        if not alpha > 0:
            raise ValueError(f"hamming: alpha must be > 0, got {alpha}")
        if reading not in READINGS:
            raise ValueError(f"hamming: unknown reading {reading!r} of eq. 17; expected one of {list(READINGS)}")
        self.alpha, self.reading = float(alpha), reading

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        if self.reading == DEFAULT_READING:  # the committed runs' path, unchanged
            return hamming(ctx.preacts["plus"], ctx.preacts["minus"], self.alpha)
        return hamming_reading(ctx.preacts["plus"], ctx.preacts["minus"], self.alpha, self.reading)


@register_term
class Stability(Term):
    """The stability regularizer (eq. 16) between the outputs at x + rho and x - rho.

    ``output``: ``"logits"`` (f = z_{n-1}, eq. 4: the paper's) or ``"softmax"``; ``reduction``: ``"sum"``
    over the batch (eq. 16: the paper's) or ``"mean"``. Only the literal reading (logits, sum) puts the
    losses at initialisation in the ratio appendix A states for the paper's weights
    (``benchmarks/results/calibration.md``); the others stay for comparison."""

    name = "stability"
    views = ("plus", "minus")
    ramp_by_default = True

    def __init__(self, output: str = "logits", reduction: str = "sum") -> None:
        if output not in OUTPUTS:
            raise ValueError(f"stability: unknown output {output!r}; expected one of {OUTPUTS}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"stability: unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        self.output, self.reduction = output, reduction

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return stability(_output(ctx.logits["plus"], self.output), _output(ctx.logits["minus"], self.output),
                         self.reduction)


@register_term
class DenseLaplacian(Term):
    """Dense heat-kernel Laplacian (eqs. 12-14) over ALL 2B perturbed points {x_i + rho_i, x_i - rho_i} of
    the batch, with ``g = (sqrt(gamma_S) f, sqrt(gamma_H) f_H)`` (eq. 12): ``gamma_s`` / ``gamma_h`` are the
    paper's weights inside g, the term's weight multiplies the whole (1 for the paper's objective). ``output``
    and ``reduction`` read f and the batch reduction of the output part as the stability term does; the
    pattern part has eq. 17's normalisation (``dense_laplacian``): restricted to the paired edges with unit
    weights the term equals ``gamma_S * stability + gamma_H * hamming``.

    ``bandwidth`` s of ``W_ij = exp(-||x_i - x_j||^2 / s)``; ``None`` uses the batch mean of
    ``||(x + rho) - (x - rho)||^2`` (= 4 eps^2 d away from the [0, 1] clip), so each paired edge weighs
    about exp(-1). An edge between perturbed copies of two different training points has squared length
    about ``||x_i - x_j||^2 + 2 eps^2 d`` (independent random corners), so it weighs little only when
    the training points are farther apart than the ball -- the regime in which the paired x +/- rho
    form (hamming + stability) is the Laplacian's sparsification (``robustlib.data.neighbours`` measures it).
    Cost: an (2B)^2 pairwise L1 distance per ReLU layer.
    """

    name = "dense_laplacian"
    views = ("plus", "minus")
    needs_preacts = True
    ramp_by_default = True

    def __init__(self, gamma_s: float = 0.8, gamma_h: float = 2400.0, bandwidth: float | None = None,
                 alpha: float = 8.0, output: str = "logits", reduction: str = "sum") -> None:
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"dense_laplacian: bandwidth must be > 0 (or None), got {bandwidth}")
        if not alpha > 0:
            raise ValueError(f"dense_laplacian: alpha must be > 0, got {alpha}")
        if not (gamma_s >= 0 and gamma_h >= 0):
            raise ValueError(f"dense_laplacian: gamma_s, gamma_h must be >= 0, got {gamma_s}, {gamma_h}")
        if output not in OUTPUTS:
            raise ValueError(f"dense_laplacian: unknown output {output!r}; expected one of {OUTPUTS}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"dense_laplacian: unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        self.alpha, self.gamma_s, self.gamma_h = float(alpha), float(gamma_s), float(gamma_h)
        self.output, self.reduction = output, reduction

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        points = torch.cat([ctx.inputs["plus"], ctx.inputs["minus"]])
        s = self.bandwidth
        if s is None:
            s = float((ctx.inputs["plus"] - ctx.inputs["minus"]).flatten(1).pow(2).sum(1).mean())
            s = max(s, 1e-12)
        out = _output(torch.cat([ctx.logits["plus"], ctx.logits["minus"]]), self.output)
        pre = [torch.cat([zp, zm]) for zp, zm in zip(ctx.preacts["plus"], ctx.preacts["minus"], strict=True)]
        return dense_laplacian(heat_kernel(points, s), out, pre, self.alpha, self.gamma_s, self.gamma_h,
                               ctx.x.shape[0], self.reduction)
