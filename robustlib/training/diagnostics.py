"""Per-epoch diagnostics of a training run, on one fixed probe batch: what explains a collapse.

For a run whose objective has a paper regularizer (Hamming, stability, dense Laplacian; Jin & Rinard eqs. 11,
16, 17), ``epoch_diagnostics`` records after every epoch, on the first ``PROBE_SIZE`` validation images:

* ``diag_<term>_weighted``: each term's value times its current (ramped) weight, ``w_t * L_t``;
* ``diag_grad_<term>``: the L2 norm, over ALL parameters, of the gradient of ``w_t * L_t`` (what the term
  pulls with); ``diag_grad_total`` the norm of the whole objective's gradient;
* ``diag_dead_l<j>``: per ReLU layer j, the fraction of units (every element of the layer's pre-activation)
  that are off (z <= 0) for EVERY probe image -- dead on the probe batch;
* ``diag_unstable_l<j>``: per ReLU layer j, the fraction of (image, unit) pairs whose ReLU state differs
  between x + rho and x - rho (sign of the pre-activation), rho a random corner of the current eps-cube
  (the views the paper's regularizers see, clipped to [0, 1] as in training): the alpha -> inf Hamming
  distance of eq. 10, a LOWER bound on the units interval bounds would call unstable;
* ``diag_w1_norm``: the Frobenius norm of the first Conv2d/Linear layer's weight;
* ``probe_classes``: how many distinct classes the model predicts on the probe batch (1 = constant).

Nothing here can change training (``tests/test_train.py`` checks equal weights with and without): the probe's
rho comes from its own generator (``probe_generator``, seeded from the run seed, re-seeded every epoch so every
epoch sees the same corners), never from the training generator; the global RNG is forked; gradients are taken
with ``torch.autograd.grad`` (``.grad`` is never touched); every buffer (BatchNorm statistics, spectral-norm
vectors) is restored, and the train/eval flags of every module. The objective's terms and their gradients are
evaluated in TRAIN mode (what the optimizer sees), each term in its own forward pass over its own views (a backward
through the compiled Hamming function cannot retain its graph for a second one; the total gradient is the sum of the
terms'); dead units, unstable units and predictions in EVAL mode (what evaluation sees); the two agree for networks
without BatchNorm (SmallCNN, CW-CNN). Cost per epoch: about one training step per term on 128 images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from robustlib.regularizers.core import Objective, StepContext
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)

PROBE_SIZE = 128  # the first 128 validation images
PAPER_TERMS = frozenset({"hamming", "stability", "dense_laplacian"})
_PROBE_STREAM = 0x5EED_D1A6  # keeps the probe generator's seeds apart from the training generator's


def wants_diagnostics(objective: Mapping[str, object]) -> bool:
    """Whether a run's objective has a paper regularizer (the runs that record diagnostics by default)."""
    return bool(PAPER_TERMS & set(objective))


def probe_generator(seed: int) -> torch.Generator:
    """The probe's own generator, seeded from the run seed (never the training generator)."""
    return torch.Generator().manual_seed(_PROBE_STREAM + 1_000_003 * int(seed))


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore every buffer, every module's train flag and the global RNG state on exit."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = [(m, m.training) for m in model.modules()]
    devices = [torch.device(b.device) for b in buffers.values() if b.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):
        try:
            yield
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
            for m, training in modes:
                m.training = training


def _first_weight(model: nn.Module) -> torch.Tensor | None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m.weight
    return None


def constant_streak(history: Sequence[Mapping[str, float]]) -> int:
    """How many epochs, counted back from the last, predicted a single class on the probe batch."""
    n = 0
    for row in reversed(history):
        if row.get("probe_classes") != 1:
            break
        n += 1
    return n


def probe_classes(model: nn.Module, x: torch.Tensor) -> float:
    """How many distinct classes ``model`` (in eval mode; flags restored) predicts on ``x``."""
    with _untouched(model):
        model.eval()
        with torch.no_grad():
            return float(model(x).argmax(1).unique().numel())


def epoch_diagnostics(model: nn.Module, objective: Objective, x: torch.Tensor, y: torch.Tensor, eps: float,
                      norm: str, progress: float, eps_fraction: float, seed: int) -> dict[str, float]:
    """The diagnostics of the module docstring on the probe batch ``(x, y)`` at the current ``eps`` and
    ``progress`` (for the weight ramps). ``seed``: the run seed (``probe_generator``)."""
    if x.shape[0] == 0:
        return {}
    out: dict[str, float] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    threat = ThreatModel(norm, eps)
    with _untouched(model):
        model.train()
        total: list[torch.Tensor] | None = None
        for name, wt in objective.terms.items():
            # one forward per term, so that each backward frees its graph (the compiled Hamming function's backward
            # cannot retain it); every term sees the same rho: a fresh probe generator each time
            ctx = StepContext(model, x, y, threat, progress, probe_generator(seed), eps_fraction=eps_fraction)
            with torch.enable_grad():
                wt.term.prepare(ctx)
                ctx.run_views(wt.term.views, wt.term.needs_preacts)
                value = wt.weight_at(progress) * wt.term(ctx)
                grads = [torch.zeros_like(p) if g is None else g.detach()
                         for p, g in zip(params, torch.autograd.grad(value, params, allow_unused=True), strict=True)]
            out[f"diag_{name}_weighted"] = float(value.detach())
            out[f"diag_grad_{name}"] = _norm(grads)
            total = grads if total is None else [a + b for a, b in zip(total, grads, strict=True)]
        out["diag_grad_total"] = _norm(total or [])
        # the probe's x +/- rho: the first draw of the probe generator, the corners the paper's terms saw above
        rho = threat.random_corner(x, probe_generator(seed))
        plus, minus = (x + rho).clamp(0.0, 1.0), (x - rho).clamp(0.0, 1.0)
        model.eval()
        with torch.no_grad():
            logits, z_clean = model(x, return_preacts=True)
            _, z_plus = model(plus, return_preacts=True)
            _, z_minus = model(minus, return_preacts=True)
        for j, (z, zp, zm) in enumerate(zip(z_clean, z_plus, z_minus, strict=True)):
            out[f"diag_dead_l{j}"] = float((z.flatten(1) <= 0).all(0).float().mean())
            out[f"diag_unstable_l{j}"] = float(((zp > 0) != (zm > 0)).float().mean())
        out["probe_classes"] = float(logits.argmax(1).unique().numel())
        out["probe_acc"] = float((logits.argmax(1) == y).float().mean())
        w = _first_weight(model)
        if w is not None:
            out["diag_w1_norm"] = float(w.detach().norm())
    return out


def _norm(grads: Sequence[torch.Tensor | None]) -> float:
    sq = sum(float(g.detach().pow(2).sum()) for g in grads if g is not None)
    return math.sqrt(sq)
