"""Objectives as weighted sums of named terms, and the terms themselves.

An objective is ``sum_t w_t(progress) * term_t(ctx)``; the training loop only calls the objective.
Each term is a small class registered under its name in ``TERMS``; it declares which input views it
reads (``clean``, ``plus`` = x + rho, ``minus`` = x - rho, with rho a fresh random corner of the
eps-cube per example) and whether it needs ReLU pre-activations. The objective evaluates all
requested views in ONE forward pass over the concatenated batch, so e.g. cross-entropy + hamming +
stability costs one pass over a 3x batch (the paper's claim: "on par with three parallel passes").
Terms needing adversarial examples run their own attack through ``robustlib.attacks.ascent``
with the step's threat model.

Reference: Jin & Rinard, "Efficient Regularization for Robust Deep ReLU Networks" (eqs. 10-11,
16-17).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)

VIEWS = ("clean", "plus", "minus")


# ---------------------------------------------------------------------------------------------
# The paper's two regularizers as plain functions
# ---------------------------------------------------------------------------------------------
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
    per_layer = []
    for zp, zm in zip(z_plus, z_minus, strict=True):
        d = 0.5 * (torch.tanh(alpha * zp) - torch.tanh(alpha * zm)).abs().flatten(1).mean(1)
        per_layer.append(d * d)
    return torch.stack(per_layer, 1).mean()


def stability(out_plus: torch.Tensor, out_minus: torch.Tensor) -> torch.Tensor:
    """Stability regularizer (Jin & Rinard eq. 16): batch mean of ``||f(x+rho) - f(x-rho)||_2^2``."""
    return (out_plus - out_minus).flatten(1).pow(2).sum(1).mean()


# ---------------------------------------------------------------------------------------------
# Step context: the batch, its views and the shared forward pass
# ---------------------------------------------------------------------------------------------
@dataclass
class StepContext:
    """What a term sees at one training step."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    threat: ThreatModel  # with the current (possibly ramped) eps
    progress: float = 0.0  # fraction of training done, in [0, 1]
    generator: torch.Generator | None = None
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    preacts: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def run_views(self, views: Sequence[str], with_preacts: bool) -> None:
        """Evaluate the requested views in one forward pass and store logits (and pre-activations)."""
        unknown = set(views) - set(VIEWS)
        if unknown:
            raise ValueError(f"unknown views {sorted(unknown)}; expected some of {VIEWS}")
        views = [v for v in VIEWS if v in views]
        if not views:
            return
        if "plus" in views or "minus" in views:
            rho = self.threat.random_corner(self.x, self.generator)
            self.inputs["plus"] = (self.x + rho).clamp(0.0, 1.0)
            self.inputs["minus"] = (self.x - rho).clamp(0.0, 1.0)
        self.inputs["clean"] = self.x
        batch = torch.cat([self.inputs[v] for v in views]) if len(views) > 1 else self.inputs[views[0]]
        if with_preacts:
            out, pre = self.model(batch, return_preacts=True)
        else:
            out, pre = self.model(batch), None
        n = self.x.shape[0]
        for i, v in enumerate(views):
            self.logits[v] = out[i * n:(i + 1) * n]
            if pre is not None:
                self.preacts[v] = [z[i * n:(i + 1) * n] for z in pre]


# ---------------------------------------------------------------------------------------------
# Terms
# ---------------------------------------------------------------------------------------------
class Term:
    """Base class: a named loss term. Subclasses set ``name``/``views``/``needs_preacts`` and
    implement ``__call__(ctx) -> scalar tensor``. Constructor keyword arguments are the term's
    hyperparameters (from params.yaml)."""

    name: ClassVar[str] = ""
    views: ClassVar[tuple[str, ...]] = ()
    needs_preacts: ClassVar[bool] = False

    def __call__(self, ctx: StepContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


TERMS: dict[str, type[Term]] = {}


def register_term(cls: type[Term]) -> type[Term]:
    """Class decorator adding a term to ``TERMS`` under ``cls.name``."""
    if not cls.name or cls.name in TERMS:
        raise ValueError(f"term name {cls.name!r} is empty or already registered")
    TERMS[cls.name] = cls
    return cls


@register_term
class CrossEntropy(Term):
    """Cross-entropy on the clean inputs."""

    name = "ce"
    views = ("clean",)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return F.cross_entropy(ctx.logits["clean"], ctx.y)


@register_term
class Hamming(Term):
    """The relaxed Hamming regularizer between the ReLU patterns at x + rho and x - rho."""

    name = "hamming"
    views = ("plus", "minus")
    needs_preacts = True

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

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return stability(F.softmax(ctx.logits["plus"], 1), F.softmax(ctx.logits["minus"], 1))


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ramp:
    """Linear ramp of a weight from 1x at ``start`` to ``factor``x at ``end`` (fractions of training).

    Paper appendix A: gamma_S and gamma_H rise linearly to 10x from epoch 20 to 80 of 100.
    """

    start: float = 0.2
    end: float = 0.8
    factor: float = 10.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.start <= self.end <= 1.0) or self.factor <= 0:
            raise ValueError(f"impossible ramp {self}: need 0 <= start <= end <= 1 and factor > 0")

    def __call__(self, progress: float) -> float:
        if progress <= self.start:
            return 1.0
        if progress >= self.end or self.end == self.start:
            return self.factor
        t = (progress - self.start) / (self.end - self.start)
        return 1.0 + t * (self.factor - 1.0)


@dataclass
class WeightedTerm:
    term: Term
    weight: float
    ramp: Ramp | None = None

    def weight_at(self, progress: float) -> float:
        return self.weight * (self.ramp(progress) if self.ramp is not None else 1.0)


class Objective:
    """A weighted sum of named terms. ``objective(ctx)`` returns ``(total, {name: value})``."""

    def __init__(self, terms: Mapping[str, WeightedTerm]) -> None:
        if not terms:
            raise ValueError("an objective needs at least one term")
        self.terms = dict(terms)
        self.views = tuple(v for v in VIEWS if any(v in t.term.views for t in self.terms.values()))
        self.needs_preacts = any(t.term.needs_preacts for t in self.terms.values())

    def __call__(self, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ctx.run_views(self.views, self.needs_preacts)
        parts: dict[str, torch.Tensor] = {}
        total = None
        for name, wt in self.terms.items():
            value = wt.term(ctx)
            parts[name] = value.detach()
            w = wt.weight_at(ctx.progress)
            total = w * value if total is None else total + w * value
        return total, parts


def build_objective(spec: Mapping[str, Any], ramp: Ramp | Mapping[str, float] | None = None) -> Objective:
    """Build an objective from a params.yaml mapping ``{term_name: weight | {weight, ramp, **kwargs}}``.

    ``ramp`` (a ``Ramp`` or its fields) applies to every term except ``ce`` unless the term says
    ``ramp: false``. Unknown term names and unknown hyperparameters raise ``ValueError``.
    """
    if isinstance(ramp, Mapping):
        ramp = Ramp(**ramp)
    terms: dict[str, WeightedTerm] = {}
    for name, value in spec.items():
        if name not in TERMS:
            raise ValueError(f"unknown objective term {name!r}; known terms: {sorted(TERMS)}")
        opts = dict(value) if isinstance(value, Mapping) else {"weight": value}
        weight = float(opts.pop("weight", 1.0))
        if weight < 0:
            raise ValueError(f"term {name!r}: weight must be >= 0, got {weight}")
        use_ramp = bool(opts.pop("ramp", name != "ce"))
        cls = TERMS[name]
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        bad = sorted(set(opts) - set(allowed))
        if bad:
            raise ValueError(f"term {name!r}: unknown options {bad}; allowed: {['weight', 'ramp', *allowed]}")
        terms[name] = WeightedTerm(cls(**opts), weight, ramp if use_ramp else None)
    return Objective(terms)
