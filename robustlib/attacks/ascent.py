"""The one ascent engine of robustlib: render -> loss -> step -> project, with restarts and a
per-example best-so-far. Every attack (FGSM, PGD, transfer, StAdv, ReColorAdv, JPEG, LPA, PPGD), the
adversarial-training terms (PGD-AT, TRADES, ARR, ...) and the verifier's pre-MILP attack run through
``maximize``; they differ only in their ``Problem`` (what is optimized and how it becomes an image),
their ``StepRule`` and what they keep.

An attack's variable ``theta`` is either the image itself (the L-inf/L2 balls: ``ball_problem``) or
the parameters of a perturbation function (StAdv's flow, ReColorAdv's colour lattice, the JPEG
coefficients) that ``render`` turns into an image. Each step: render the iterate, evaluate the model,
take the gradient of the per-example objective with respect to ``theta``, let the step rule move
``theta``, project it back onto the threat set. The model's parameters receive no gradient, and the
model's train/eval mode is the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.attacks.common import margin_loss
from robustlib.threat import ThreatModel, steepest_ascent

Tensor = torch.Tensor
LossFn = Callable[[Tensor], Tensor]
"""Maps logits ``(B, C)`` to a per-example loss ``(B,)`` to be maximized."""
Objective = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``objective(logits, theta, idx) -> (b,)``: the per-example value to MAXIMIZE for the examples ``idx``."""
Trace = Callable[[int, int, Tensor, Tensor, Tensor], None]
"""``trace(restart, step, idx, image, objective)``: called at every evaluated iterate (tests)."""


@dataclass(frozen=True)
class Problem:
    """What one attack maximizes, for the batch ``x`` (every callable gets the example indices ``idx``
    of the rows it is given, since finished examples leave the batch).

    ``start(idx, restart, previous)``: the first iterate of a restart (``previous``: the last iterate
    of the previous restart for these rows, ``None`` at restart 0). ``project(theta, idx)``: onto the
    threat set. ``render(theta, idx)``: the image (``None``: ``theta`` is the image). ``feasible(image,
    idx)``: which rendered iterates count as attack points (``None``: all; penalty methods such as
    LPA iterate outside the set). ``finish(theta, idx)``: a last candidate made from the final
    iterates (LPA's projection onto the LPIPS ball)."""

    x: Tensor
    objective: Objective
    start: Callable[[Tensor, int, Tensor | None], Tensor]
    project: Callable[[Tensor, Tensor], Tensor]
    render: Callable[[Tensor, Tensor], Tensor] | None = None
    feasible: Callable[[Tensor, Tensor], Tensor] | None = None
    finish: Callable[[Tensor, Tensor], Tensor] | None = None

    def image(self, theta: Tensor, idx: Tensor) -> Tensor:
        return theta if self.render is None else self.render(theta, idx)


class StepRule(Protocol):
    """``init(theta) -> state``; ``step(theta, grad, state, t) -> theta`` (``t``: the step within the
    restart). Tensors in ``state`` with the batch as first dimension follow the examples when
    finished ones leave the batch."""

    def init(self, theta: Tensor) -> dict: ...

    def __call__(self, theta: Tensor, grad: Tensor, state: dict, t: int) -> Tensor: ...


@dataclass(frozen=True)
class SteepestStep:
    """``theta + size * d`` with ``d`` the unit steepest-ascent direction of ``norm`` (sign for L-inf,
    per-example normalized for L2): PGD (Madry et al. 2018), FGSM with ``size = eps``, and the JPEG
    attack's sign steps."""

    size: float
    norm: str = "linf"

    def init(self, theta: Tensor) -> dict:
        return {}

    def __call__(self, theta: Tensor, grad: Tensor, state: dict, t: int) -> Tensor:
        return theta + self.size * steepest_ascent(grad, self.norm)


@dataclass(frozen=True)
class AdamStep:
    """One ascent step of Adam (Kingma & Ba 2015, Alg. 1; torch.optim.Adam's defaults) on ``theta``
    (StAdv, ReColorAdv). Adam is elementwise, so each example's parameters move independently."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init(self, theta: Tensor) -> dict:
        return {"t": 0, "m": torch.zeros_like(theta), "v": torch.zeros_like(theta)}

    def __call__(self, theta: Tensor, grad: Tensor, state: dict, t: int) -> Tensor:
        b1, b2 = self.betas
        state["t"] += 1
        k = state["t"]
        state["m"].mul_(b1).add_(grad, alpha=1 - b1)
        state["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (state["v"] / (1 - b2 ** k)).sqrt().add_(self.eps)
        return theta + (self.lr / (1 - b1 ** k)) * state["m"] / denom


@dataclass
class Ascent:
    """``points``: per example the kept image; ``theta``: its variable (rows of examples that kept no
    iterate are zeros); ``score``: its score (``inf``: fooled, ``-inf``: nothing kept)."""

    points: Tensor
    theta: Tensor
    score: Tensor


Keep = Literal["last", "objective", "margin"]


def maximize(model: nn.Module, problem: Problem, steps: int, step: StepRule, *, restarts: int = 1,
             keep: Keep = "last", y: Tensor | None = None, trace: Trace | None = None) -> Ascent:
    """Maximize ``problem.objective`` by ``steps`` steps of ``step`` from ``restarts`` starts.

    ``keep="last"``: the last iterate (adversarial training, Madry et al. 2018; one restart, and the
    last iterate is not evaluated). ``keep="objective"`` / ``"margin"``: per example, the feasible
    evaluated iterate (every step's, every restart's, and ``finish``'s) with the largest objective /
    Carlini-Wagner margin ``max_{j != y} z_j - z_y``.

    With labels ``y`` (evaluation attacks): an example misclassified at ``x`` is returned as ``x``
    and never attacked; an example whose feasible iterate is misclassified keeps that iterate (score
    ``inf``) and leaves the batch (no further steps or restarts), so the batch shrinks as the attack
    goes. Without ``y`` every example runs every step (e.g. the transfer attack's source loss).
    """
    _check_settings(steps, restarts, keep, y)
    if keep == "last":
        return _last_iterate(model, problem, steps, step)
    return _best_iterate(model, problem, steps, step, restarts, keep, y, trace)


def _check_settings(steps: int, restarts: int, keep: Keep, y: Tensor | None) -> None:
    """Reject step and restart counts, ``keep`` values and label use that ``maximize`` does not take."""
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not (isinstance(restarts, int) and restarts >= 1):
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    if keep not in ("last", "objective", "margin"):
        raise ValueError(f"keep must be 'last', 'objective' or 'margin', got {keep!r}")
    if keep == "last" and (restarts != 1 or y is not None):
        raise ValueError("keep='last' takes one restart and no labels (nothing is compared)")
    if keep == "margin" and y is None:
        raise ValueError("keep='margin' needs the labels y")


def _last_iterate(model: nn.Module, problem: Problem, steps: int, step: StepRule) -> Ascent:
    """``keep="last"``: every example runs every step from one start; the last iterate, not evaluated (score NaN)."""
    x = problem.x.detach()
    n, device = x.shape[0], x.device
    idx = torch.arange(n, device=device)
    theta = problem.project(problem.start(idx, 0, None).detach(), idx)
    state = step.init(theta)
    for t in range(steps):
        theta, grad, _, _, _ = _evaluate(model, problem, theta, idx, True)
        theta = problem.project(step(theta, grad, state, t), idx)
    return Ascent(problem.image(theta, idx).detach(), theta.detach(), torch.full((n,), math.nan, device=device))


@dataclass
class _Best:
    """Per example the best feasible iterate offered so far while ``maximize`` runs (``Ascent``'s fields; ``theta``
    is made on the first offer, when its shape is known)."""

    problem: Problem
    keep: Keep
    y: Tensor | None
    points: Tensor
    score: Tensor
    theta: Tensor | None = None

    def offer(self, theta: Tensor, img: Tensor, logits: Tensor, obj: Tensor, idx: Tensor) -> Tensor:
        """Keep better iterates; return which rows are finished (fooled at a feasible point)."""
        problem, y = self.problem, self.y
        if self.theta is None:
            self.theta = theta.new_zeros((self.points.shape[0], *theta.shape[1:]))
        ok = problem.feasible(img, idx) if problem.feasible is not None else torch.ones_like(obj, dtype=torch.bool)
        s = obj if self.keep == "objective" else margin_loss(logits, y[idx])
        fooled = ok & (logits.argmax(1) != y[idx]) if y is not None else torch.zeros_like(ok)
        s = torch.where(fooled, torch.full_like(s, math.inf), s)
        better = ok & (s > self.score[idx])
        if bool(better.any()):
            rows = idx[better]
            self.points[rows], self.theta[rows], self.score[rows] = img[better], theta[better], s[better]
        return fooled


def _best_iterate(model: nn.Module, problem: Problem, steps: int, step: StepRule, restarts: int, keep: Keep,
                  y: Tensor | None, trace: Trace | None) -> Ascent:
    """``keep="objective"`` / ``"margin"``: the restarts, then ``finish``; per example the best feasible iterate
    (``maximize``)."""
    x = problem.x.detach()
    n, device = x.shape[0], x.device
    best = _Best(problem, keep, y, x.clone(), torch.full((n,), -math.inf, device=device))
    todo = torch.arange(n, device=device)
    if y is not None:
        with torch.no_grad():
            todo = (model(x).argmax(1) == y).nonzero().squeeze(1)
    idx, theta = todo, None
    for r in range(restarts):
        idx = todo[best.score[todo] != math.inf]  # fooled examples are done
        if idx.numel() == 0:
            break
        prev = None if r == 0 else theta  # the same rows: those not fooled by restart r - 1
        idx, theta = _restart(model, problem, steps, step, r, idx, prev, best, trace)
    if problem.finish is not None and idx.numel() and theta is not None:
        _offer_finish(model, problem, theta, idx, best)
    if best.theta is None:
        best.theta = x.new_zeros(x.shape) if problem.render is None else x.new_zeros((n, 0))
    return Ascent(best.points, best.theta, best.score)


def _restart(model: nn.Module, problem: Problem, steps: int, step: StepRule, r: int, idx: Tensor,
             prev: Tensor | None, best: _Best, trace: Trace | None) -> tuple[Tensor, Tensor]:
    """Restart ``r`` on the rows ``idx``: ``steps`` steps from ``problem.start``, every iterate offered to
    ``best``; fooled rows leave the batch. Returns the rows left and their last iterate."""
    theta = problem.project(problem.start(idx, r, prev).detach(), idx)
    state = step.init(theta)
    for t in range(steps + 1):
        need_grad = t < steps
        theta, grad, img, logits, obj = _evaluate(model, problem, theta, idx, need_grad)
        if trace is not None:
            trace(r, t, idx, img, obj)
        fooled = best.offer(theta, img, logits, obj, idx)
        if bool(fooled.any()):
            alive = ~fooled
            idx, theta = idx[alive], theta[alive]
            grad = grad[alive] if grad is not None else None
            state = {k: v[alive] if _per_example(v, alive) else v for k, v in state.items()}
            if idx.numel() == 0:
                break
        if need_grad:
            theta = problem.project(step(theta, grad, state, t), idx)
    return idx, theta


def _offer_finish(model: nn.Module, problem: Problem, theta: Tensor, idx: Tensor, best: _Best) -> None:
    """Offer ``best`` the candidate ``problem.finish`` makes from the final iterates ``theta`` of the rows ``idx``."""
    theta = problem.finish(theta, idx).detach()  # may differentiate (LPA's Newton projection)
    with torch.no_grad():
        img = problem.image(theta, idx)
        logits = model(img)
        best.offer(theta, img, logits, problem.objective(logits, theta, idx), idx)


def _per_example(v: object, alive: Tensor) -> bool:
    return torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == alive.shape[0]


def _evaluate(model: nn.Module, problem: Problem, theta: Tensor, idx: Tensor, need_grad: bool):
    """Render ``theta``, evaluate the model and the objective; the objective's gradient in ``theta``."""
    with torch.set_grad_enabled(need_grad):
        theta = theta.detach().requires_grad_(need_grad)
        img = problem.image(theta, idx)
        logits = model(img)
        obj = problem.objective(logits, theta, idx)
        grad = torch.autograd.grad(obj.sum(), theta)[0] if need_grad else None
    return theta.detach(), grad, img.detach(), logits.detach(), obj.detach()


def cross_entropy(y: Tensor) -> Objective:
    """The per-example cross-entropy objective for labels ``y`` (of the rows ``idx``)."""
    return lambda logits, theta, idx: F.cross_entropy(logits, y[idx], reduction="none")


def ball_problem(x: Tensor, objective: Objective, threat: ThreatModel, *, random_start: bool = True,
                 generator: torch.Generator | None = None, start: Tensor | None = None) -> Problem:
    """The ``threat`` ball around ``x`` (intersected with [0, 1]); ``theta`` is the image. Each restart
    starts at ``start`` (projected) if given, else at a uniformly random point of the ball
    (``random_start``), else at ``x``."""
    x = x.detach()
    if start is not None and start.shape != x.shape:
        raise ValueError(f"start has shape {tuple(start.shape)}, x has {tuple(x.shape)}")

    def first(idx: Tensor, restart: int, previous: Tensor | None) -> Tensor:
        if start is not None:
            return start.detach()[idx]
        return threat.random_start(x[idx], generator) if random_start else x[idx].clone()

    return Problem(x, objective, first, lambda theta, idx: threat.project(theta, x[idx]))


def ascend(model: nn.Module, x: Tensor, loss_fn: LossFn, threat: ThreatModel, steps: int,
           step_size: float | None = None, random_start: bool = True,
           generator: torch.Generator | None = None, start: Tensor | None = None) -> Tensor:
    """The inner maximization of adversarial training (Madry et al. 2018): the last of ``steps``
    projected steepest-ascent steps (sign for L-inf, normalized for L2; default size 2.5 eps / steps)
    on ``loss_fn(model(x'))`` over the ``threat`` ball, from ``start`` (projected) or a uniformly random
    point (``random_start``) or ``x``. Detached, inside the ball and in [0, 1]; ``steps=0`` returns the
    start point."""
    size = threat.default_step_size(steps) if step_size is None else float(step_size)
    problem = ball_problem(x, lambda logits, theta, idx: loss_fn(logits), threat, random_start=random_start,
                           generator=generator, start=start)
    return maximize(model, problem, steps, SteepestStep(size, threat.norm)).points
