"""Gradient attacks in an L-inf or L2 ball: FGSM, PGD with restarts, a transfer (black-box) attack, and
``escape_pgd`` for gradient-blind points (AutoAttack's zero-gradient survivors).

All run on the ascent engine (``robustlib.attacks.ascent.maximize``). PGD (Madry et al. 2018) is
the hot loop of the attack stage. Per example it keeps the MOST adversarial
point seen over all steps and restarts: the first misclassified point ends the example at once; while
the example is still classified correctly, the point of highest cross-entropy is kept. Examples that
are misclassified (clean, or by an earlier step or restart) get no further steps: the active batch
shrinks as the attack goes. Every returned point lies in the ball intersected with [0, 1].
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from robustlib.attacks.ascent import SteepestStep, Trace, ball_problem, cross_entropy, maximize
from robustlib.attacks.common import (
    AttackResult,
    check_count,
    check_inputs,
    check_threat,
    chunks,
    eval_mode,
    zero_jacobian,
)
from robustlib.bounds.intervals import to_sequential
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> AttackResult:
    """Fast gradient (sign) method (Goodfellow et al. 2015): one steepest-ascent step of length ``eps``
    on the cross-entropy from the clean point, ``x + eps * sign(grad)`` for L-inf and
    ``x + eps * grad / ||grad||_2`` for L2, then clipped to [0, 1]."""
    check_inputs(x, y)
    check_threat(threat)
    with eval_mode(model), torch.enable_grad():
        problem = ball_problem(x, cross_entropy(y), threat, random_start=False)
        return AttackResult(maximize(model, problem, 1, SteepestStep(threat.eps, threat.norm)).points)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int = 20,
        restarts: int = 1, step_size: float | None = None, generator: torch.Generator | None = None, *,
        random_start: bool = True, batch_size: int = 1000, trace: Trace | None = None) -> AttackResult:
    """Projected gradient descent on the cross-entropy (Madry et al. 2018) with random starts.

    ``steps`` sign (L-inf) or normalized (L2) steps of ``step_size`` (default 2.5 * eps / steps) from a
    uniformly random point of the ball, ``restarts`` times. Returns, per example, the most
    adversarial point found (see the module docstring); examples misclassified on the clean input
    are returned unchanged. The model runs in eval mode (restored afterwards). ``batch_size`` bounds
    memory; ``random_start=False`` starts every restart at the clean point; ``trace`` is a test hook.
    """
    check_inputs(x, y)
    check_threat(threat)
    steps = check_count("steps", steps, 0)
    restarts = check_count("restarts", restarts, 1)
    batch_size = check_count("batch_size", batch_size, 1)
    step = threat.default_step_size(steps) if step_size is None else float(step_size)
    if not step >= 0:
        raise ValueError(f"step_size must be >= 0, got {step_size!r}")
    x = x.detach()
    if threat.eps == 0:
        return AttackResult(x.clone())
    out = []
    with eval_mode(model):
        for s in chunks(x.shape[0], batch_size):
            hook = None if trace is None else \
                (lambda r, t, idx, xa, loss, o=s.start: trace(r, t, idx + o, xa, loss))
            problem = ball_problem(x[s], cross_entropy(y[s]), threat, random_start=random_start, generator=generator)
            out.append(maximize(model, problem, steps, SteepestStep(step, threat.norm), restarts=restarts,
                                keep="objective", y=y[s], trace=hook).points)
    return AttackResult(torch.cat(out) if out else x.clone())


def transfer(source_model: nn.Module, target_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             threat: ThreatModel, steps: int = 20, restarts: int = 1, step_size: float | None = None,
             generator: torch.Generator | None = None, *, batch_size: int = 1000) -> AttackResult:
    """Transfer (black-box) attack (Papernot et al. 2017): PGD crafted on ``source_model`` only, keeping
    per example the point of highest source cross-entropy over all steps and restarts (no early stop,
    so points go deep past the source's boundary). The target is never queried while crafting;
    evaluate the returned points on ``target_model`` (e.g. ``robustlib.evaluation.worst_case.evaluate_attacks``).
    ``target_model`` is used only to check that both models agree on the number of classes."""
    check_inputs(x, y)
    check_threat(threat)
    steps = check_count("steps", steps, 0)
    restarts = check_count("restarts", restarts, 1)
    step = threat.default_step_size(steps) if step_size is None else float(step_size)
    x = x.detach()
    with eval_mode(source_model), eval_mode(target_model), torch.no_grad():
        k_src, k_tgt = source_model(x[:1]).shape[-1], target_model(x[:1]).shape[-1]
    if k_src != k_tgt:
        raise ValueError(f"source model has {k_src} classes, target model {k_tgt}")
    if threat.eps == 0:
        return AttackResult(x.clone())
    out = []
    with eval_mode(source_model):
        for s in chunks(x.shape[0], batch_size):
            problem = ball_problem(x[s], cross_entropy(y[s]), threat, random_start=True, generator=generator)
            out.append(maximize(source_model, problem, steps, SteepestStep(step, threat.norm), restarts=restarts,
                                keep="objective").points)
    return AttackResult(torch.cat(out) if out else x.clone())


def _relu_inputs(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every ReLU of ``net`` at ``x`` (its pre-activations), flattened per example."""
    out = []
    for layer in net:
        if isinstance(layer, nn.ReLU):
            out.append(x.flatten(1))
        x = layer(x)
    return out


def escape_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int = 100,
               batch_size: int = 1000) -> AttackResult:
    """An adaptive attack for gradient-blind points (Tramer et al. 2020, "On Adaptive Attacks to
    Adversarial Example Defenses": when the loss gives no gradient, attack a surrogate that does).

    At a point where a whole ReLU layer is off, the logits are locally constant and every gradient
    attack (and Square's random search, on a flat loss) is blind. Here, first ``steps`` steepest-ascent
    steps from ``x`` maximize ``sum_l logsumexp(pre-activations of ReLU layer l)`` -- a smooth maximum
    that switches on the units closest to turning on -- keeping per example the iterate of largest
    surrogate; then ``steps`` PGD steps on the cross-entropy start from that point. Both run on the
    ascent engine in the ``threat`` ball (step 2.5 eps / steps). Needs a network ``to_sequential``
    supports (``ValueError`` otherwise). ``info["seen"]`` (BoolTensor): the cross-entropy attack started
    at a point where the logits' input Jacobian is not exactly zero, i.e. gradients could see the
    example."""
    check_inputs(x, y)
    check_threat(threat)
    steps = check_count("steps", steps, 1)
    batch_size = check_count("batch_size", batch_size, 1)
    net = to_sequential(model)
    x = x.detach()
    size = threat.default_step_size(steps)

    def surrogate(logits, theta, idx):
        return sum(torch.logsumexp(z, 1) for z in _relu_inputs(net, theta))

    points, seen = [], []
    with eval_mode(model):
        for s in chunks(x.shape[0], batch_size):
            start = maximize(model, ball_problem(x[s], surrogate, threat, random_start=False), steps,
                             SteepestStep(size, threat.norm), keep="objective", y=y[s]).points
            seen.append(~zero_jacobian(model, start))
            problem = ball_problem(x[s], cross_entropy(y[s]), threat, start=start)
            points.append(maximize(model, problem, steps, SteepestStep(size, threat.norm), keep="objective",
                                   y=y[s]).points)
    if not points:
        return AttackResult(x.clone(), {"seen": torch.zeros(0, dtype=torch.bool)})
    return AttackResult(torch.cat(points), {"seen": torch.cat(seen)})
