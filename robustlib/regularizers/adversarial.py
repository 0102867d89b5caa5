"""Adversarial-training terms: PGD-AT, plain FGSM-AT, fast FGSM-AT (random start), TRADES and ARR.

Every inner maximization is ``robustlib.attacks.ascent.ascend`` with the step's threat model
(``ctx.threat``, i.e. the current, possibly ramped, eps) and ``ctx.generator``; it runs in ``prepare``
and its points are evaluated in the step's shared forward pass (``StepContext.add_view``). ``ascend``
uses ``torch.autograd.grad`` only, so the parameters' ``.grad`` is never touched.

Model mode during the attack (matters only for BatchNorm, i.e. PreActResNet18): by default the model's
current mode, as in the PGD-AT and fast-AT reference code (Madry et al. 2018 as reproduced by Rice et
al. 2020; Wong et al. 2020), except TRADES, whose reference code (Zhang et al. 2019) switches to eval
mode to craft x' and back to train mode for the loss. Every term has ``eval_attack`` to choose.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.attacks.ascent import SteepestStep, ascend, ball_problem, cross_entropy, maximize
from robustlib.regularizers.core import StepContext, Term, register_term

logger = logging.getLogger(__name__)


@contextmanager
def _mode(model: nn.Module, eval_attack: bool):
    was_training = model.training
    if eval_attack:
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_steps(name: str, steps: int, minimum: int = 1) -> int:
    if int(steps) != steps or steps < minimum:
        raise ValueError(f"{name}: steps must be an integer >= {minimum}, got {steps}")
    return int(steps)


def _check_step_size(name: str, step_size: float | None) -> float | None:
    if step_size is not None and not step_size > 0:
        raise ValueError(f"{name}: step_size must be > 0 (or None for 2.5 * eps / steps), got {step_size}")
    return None if step_size is None else float(step_size)


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(softmax(logits_p) || softmax(logits_q))`` (shape ``(B,)``)."""
    logp, logq = F.log_softmax(logits_p, 1), F.log_softmax(logits_q, 1)
    return (logp.exp() * (logp - logq)).sum(1)


def pgd_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext, steps: int,
               step_size: float | None, restarts: int = 1, random_start: bool = True) -> torch.Tensor:
    """PGD on the cross-entropy (Madry et al. 2018): the last iterate with one restart; with
    ``restarts > 1``, per example the evaluated iterate of highest loss over every step and restart."""
    ce = lambda logits: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    if restarts == 1:
        return ascend(model, x, ce, ctx.threat, steps, step_size, random_start, ctx.generator)
    size = ctx.threat.default_step_size(steps) if step_size is None else float(step_size)
    problem = ball_problem(x, cross_entropy(y), ctx.threat, random_start=random_start, generator=ctx.generator)
    return maximize(model, problem, steps, SteepestStep(size, ctx.threat.norm), restarts=restarts,
                    keep="objective").points


@register_term
class PGDAT(Term):
    """PGD adversarial training (Madry et al. 2018): cross-entropy at a PGD point (``steps`` steps of
    ``step_size``, default 2.5 * eps / steps, uniform random start, best of ``restarts``). Replaces
    ``ce`` when used alone; not ramped by default."""

    name = "pgd_at"

    def __init__(self, steps: int = 10, step_size: float | None = None, restarts: int = 1,
                 eval_attack: bool = False) -> None:
        self.steps = _check_steps(self.name, steps)
        self.step_size = _check_step_size(self.name, step_size)
        if int(restarts) != restarts or restarts < 1:
            raise ValueError(f"pgd_at: restarts must be an integer >= 1, got {restarts}")
        self.restarts, self.eval_attack = int(restarts), bool(eval_attack)

    def prepare(self, ctx: StepContext) -> None:
        with _mode(ctx.model, self.eval_attack):
            x_adv = pgd_points(ctx.model, ctx.x, ctx.y, ctx, self.steps, self.step_size, self.restarts)
        ctx.add_view("pgd_at", x_adv)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return F.cross_entropy(ctx.logits["pgd_at"], ctx.y)


@register_term
class FGSMAT(Term):
    """"Fast is better than free" adversarial training (Wong et al. 2020): cross-entropy at an FGSM point
    from a uniform random start in the ball, step ``step_factor`` * eps (1.25), projected back onto
    the ball. Replaces ``ce`` when used alone; not ramped by default."""

    name = "fgsm_at"

    def __init__(self, step_factor: float = 1.25, eval_attack: bool = False) -> None:
        if not step_factor > 0:
            raise ValueError(f"fgsm_at: step_factor must be > 0, got {step_factor}")
        self.step_factor, self.eval_attack = float(step_factor), bool(eval_attack)

    def prepare(self, ctx: StepContext) -> None:
        with _mode(ctx.model, self.eval_attack):
            x_adv = pgd_points(ctx.model, ctx.x, ctx.y, ctx, 1, self.step_factor * ctx.threat.eps or None)
        ctx.add_view("fgsm_at", x_adv)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return F.cross_entropy(ctx.logits["fgsm_at"], ctx.y)


@register_term
class PlainFGSMAT(Term):
    """Plain FGSM adversarial training (Goodfellow et al. 2015; the "FGSM" row of Jin & Rinard's Table 3,
    0% robust, and Wong et al. 2020's zero-init FGSM that overfits catastrophically): cross-entropy at
    ``x + eps * sign(grad_x CE(x))`` clipped to [0, 1] (L2: a normalized step of length eps) -- no
    random start. Replaces ``ce`` when used alone; not ramped by default."""

    name = "fgsm"

    def __init__(self, step_factor: float = 1.0, eval_attack: bool = False) -> None:
        if not step_factor > 0:
            raise ValueError(f"fgsm: step_factor must be > 0, got {step_factor}")
        self.step_factor, self.eval_attack = float(step_factor), bool(eval_attack)

    def prepare(self, ctx: StepContext) -> None:
        with _mode(ctx.model, self.eval_attack):
            x_adv = pgd_points(ctx.model, ctx.x, ctx.y, ctx, 1, self.step_factor * ctx.threat.eps or None,
                               random_start=False)
        ctx.add_view("fgsm", x_adv)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return F.cross_entropy(ctx.logits["fgsm"], ctx.y)


@register_term
class TRADES(Term):
    """TRADES (Zhang et al. 2019): batch mean of ``KL(p(x) || p(x'))`` with x' from ``steps`` projected
    sign steps (L-inf; normalized for L2) maximizing that KL; the weight is their beta (6 in the paper).
    Reads the clean view, so ``ce`` + ``trades`` is their whole loss.

    Start: x + 0.001 N(0, I) projected onto the ball, as in the reference code. ``eval_attack`` defaults
    to True as in the reference code.
    """

    name = "trades"
    views = ("clean",)

    def __init__(self, steps: int = 10, step_size: float | None = None, eval_attack: bool = True) -> None:
        self.steps = _check_steps(self.name, steps)
        self.step_size = _check_step_size(self.name, step_size)
        self.eval_attack = bool(eval_attack)

    def prepare(self, ctx: StepContext) -> None:
        with _mode(ctx.model, self.eval_attack):
            with torch.no_grad():
                target = ctx.model(ctx.x)
            kl = lambda logits: kl_divergence(target, logits)  # noqa: E731
            # TRADES' reference start: x + 0.001 N(0, I) (the KL gradient vanishes at x itself)
            noise = torch.randn(ctx.x.shape, generator=ctx.generator).to(ctx.x.device, ctx.x.dtype)
            x_adv = ascend(ctx.model, ctx.x, kl, ctx.threat, self.steps, self.step_size, generator=ctx.generator,
                           start=ctx.x + 0.001 * noise)
        ctx.add_view("trades", x_adv)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return kl_divergence(ctx.logits["clean"], ctx.logits["trades"]).mean()


@register_term
class ARR(Term):
    """Adversarial output-consistency regularizer: the distance between the clean output and the output
    at a cheap adversarial point -- ``steps`` (1-3) steps of FGSM/PGD on the cross-entropy, from x
    (``random_start=False``, FGSM for one step) or a uniform random start. ``distance``: ``"kl"`` =
    batch mean of ``KL(p(x) || p(x'))``, ``"l2"`` = batch mean of ``||p(x) - p(x')||^2`` on softmax
    probabilities (as the stability term)."""

    name = "arr"
    views = ("clean",)
    DISTANCES = ("kl", "l2")

    def __init__(self, distance: str = "kl", steps: int = 1, step_size: float | None = None,
                 random_start: bool = False, eval_attack: bool = False) -> None:
        if distance not in self.DISTANCES:
            raise ValueError(f"arr: unknown distance {distance!r}; expected one of {self.DISTANCES}")
        self.distance = distance
        self.steps = _check_steps(self.name, steps)
        if self.steps > 3:
            logger.warning("arr with %d steps: the term is meant as a cheap 1-3 step regularizer", self.steps)
        self.step_size = _check_step_size(self.name, step_size)
        self.random_start, self.eval_attack = bool(random_start), bool(eval_attack)

    def prepare(self, ctx: StepContext) -> None:
        with _mode(ctx.model, self.eval_attack):
            x_adv = pgd_points(ctx.model, ctx.x, ctx.y, ctx, self.steps, self.step_size,
                               random_start=self.random_start)
        ctx.add_view("arr", x_adv)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        clean, adv = ctx.logits["clean"], ctx.logits["arr"]
        if self.distance == "kl":
            return kl_divergence(clean, adv).mean()
        return (F.softmax(clean, 1) - F.softmax(adv, 1)).pow(2).sum(1).mean()
