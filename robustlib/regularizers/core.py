"""Objectives as weighted sums of named terms: the term registry, the step context and the objective.

An objective is ``sum_t w_t(progress) * term_t(ctx)``; the training loop only calls the objective.
Each term is a small class registered under its name in ``TERMS``; it declares which input views it
reads (``clean``, ``plus`` = x + rho, ``minus`` = x - rho, with rho a fresh random corner of the
eps-cube per example) and whether it needs ReLU pre-activations. Terms needing adversarial points
compute them in ``prepare(ctx)`` (through ``robustlib.attacks.ascent.ascend`` with ``ctx.threat``) and
register them as extra views with ``ctx.add_view``. The objective then evaluates every view of the step
-- fixed and extra -- in ONE forward pass over the concatenated batch, so cross-entropy + hamming +
stability costs one pass over a 3x batch (the paper's claim: "on par with three parallel passes"), and
TRADES costs its attack plus one pass over a 2x batch. For BatchNorm models (PreActResNet18) in train
mode, all views of a step therefore share one set of batch statistics.

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
    eps_fraction: float = 1.0  # fraction of the eps ramp done (0 before it starts, 1 after it ends or without one)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    preacts: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_views: list[str] = field(default_factory=list)

    def add_view(self, name: str, inputs: torch.Tensor) -> None:
        """Register extra inputs (e.g. adversarial points) to be evaluated in the step's shared forward
        pass; after ``run_views`` their outputs are ``logits[name]`` (and ``preacts[name]``)."""
        if name in VIEWS or name in self.inputs:
            raise ValueError(f"view {name!r} already exists")
        if inputs.shape != self.x.shape:
            raise ValueError(f"view {name!r}: shape {tuple(inputs.shape)} differs from the batch's "
                             f"{tuple(self.x.shape)}")
        self.inputs[name] = inputs.detach()
        self.extra_views.append(name)

    def run_views(self, views: Sequence[str], with_preacts: bool) -> None:
        """Evaluate the requested fixed views and every extra view in one forward pass; store logits
        (and pre-activations) per view."""
        unknown = set(views) - set(VIEWS)
        if unknown:
            raise ValueError(f"unknown views {sorted(unknown)}; expected some of {VIEWS}")
        names = [v for v in VIEWS if v in views] + list(self.extra_views)
        if not names:
            return
        if "plus" in names or "minus" in names:
            rho = self.threat.random_corner(self.x, self.generator)
            self.inputs["plus"] = (self.x + rho).clamp(0.0, 1.0)
            self.inputs["minus"] = (self.x - rho).clamp(0.0, 1.0)
        self.inputs["clean"] = self.x
        batch = torch.cat([self.inputs[v] for v in names]) if len(names) > 1 else self.inputs[names[0]]
        if with_preacts:
            out, pre = self.model(batch, return_preacts=True)
        else:
            out, pre = self.model(batch), None
        n = self.x.shape[0]
        # split (one backward node per tensor) rather than one slice per view: the backward of k slices
        # would allocate k zero-padded copies of the whole batch.
        for v, o in zip(names, out.split(n), strict=True):
            self.logits[v] = o
        if pre is not None:
            per_layer = [z.split(n) for z in pre]
            for i, v in enumerate(names):
                self.preacts[v] = [parts[i] for parts in per_layer]


# ---------------------------------------------------------------------------------------------
# Terms
# ---------------------------------------------------------------------------------------------
class Term:
    """Base class: a named loss term. Subclasses set ``name``/``views``/``needs_preacts`` and implement
    ``__call__(ctx) -> scalar tensor``; terms that need extra inputs (adversarial points) also override
    ``prepare(ctx)``, which runs before the shared forward pass. Constructor keyword arguments are the
    term's hyperparameters (from params.yaml); ``ramp_by_default`` says whether the objective's weight
    ramp applies unless the spec says otherwise (True only for the paper's regularizers)."""

    name: ClassVar[str] = ""
    views: ClassVar[tuple[str, ...]] = ()
    needs_preacts: ClassVar[bool] = False
    ramp_by_default: ClassVar[bool] = False

    def prepare(self, ctx: StepContext) -> None:
        """Hook run before the shared forward pass (default: nothing)."""

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
        for wt in self.terms.values():
            wt.term.prepare(ctx)
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

    ``ramp`` (a ``Ramp`` or its fields) applies by default to the paper's regularizers (``hamming``,
    ``stability``, ``dense_laplacian``: their gamma_H / gamma_S schedule, appendix A) and to no other
    term (baselines keep their papers' constant weights); ``ramp: false`` / ``ramp: true`` in a term's
    spec overrides the default. Unknown term names, unknown hyperparameters and negative weights raise
    ``ValueError``; each term validates its own hyperparameters.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"an objective spec must be a mapping of term names, got {type(spec).__name__}")
    if isinstance(ramp, Mapping):
        ramp = Ramp(**ramp)
    terms: dict[str, WeightedTerm] = {}
    for name, value in spec.items():
        if name not in TERMS:
            raise ValueError(f"unknown objective term {name!r}; known terms: {sorted(TERMS)}")
        cls = TERMS[name]
        opts = dict(value) if isinstance(value, Mapping) else {"weight": value}
        try:
            weight = float(opts.pop("weight", 1.0))
        except (TypeError, ValueError):
            raise ValueError(f"term {name!r}: weight must be a number, got {value!r}") from None
        if not weight >= 0:
            raise ValueError(f"term {name!r}: weight must be >= 0, got {weight}")
        use_ramp = bool(opts.pop("ramp", cls.ramp_by_default))
        params = inspect.signature(cls.__init__).parameters
        allowed = [p for p in params if p not in ("self", "args", "kwargs")]
        bad = sorted(set(opts) - set(allowed))
        if bad:
            raise ValueError(f"term {name!r}: unknown options {bad}; allowed: {['weight', 'ramp', *allowed]}")
        terms[name] = WeightedTerm(cls(**opts), weight, ramp if use_ramp else None)
    return Objective(terms)
