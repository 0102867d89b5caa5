"""What every attack shares: its result type, input validation, eval mode, exceptions, and the zero-Jacobian
test of gradient-blind points (AutoAttack's survivors, the escape attack's starts)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlib.threat import ThreatModel


@dataclass
class AttackResult:
    """What every attack returns: per example the adversarial point it found (the clean input where
    it found none, or where the model already errs), and ``info``: what the attack reports beside the
    points (e.g. AutoAttack's Square flag, StAdv's flow), picklable, kept with the results."""

    points: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], AttackResult]
"""``attack(model, x, y) -> AttackResult`` with every other setting bound (e.g. ``functools.partial``, or a
``robustlib.evaluation.suite.SuiteAttack``)."""


class NotApplicable(ValueError):
    """An attack does not apply to this input (e.g. ReColorAdv on 1-channel images); the message says why."""


class AttackCheckError(RuntimeError):
    """An evaluation check flagged the model or the attack (AutoAttack's checks, made fatal).

    ``flag`` names the check (``randomized``, ``softmax_output``, ``zero_gradients``, ``dynamic``,
    ``n_classes``, ``square_stronger``).
    """

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"[{flag}] {message}")
        self.flag, self.message = flag, message

    def __reduce__(self):  # picklable, so that it crosses from a worker process unchanged
        return self.__class__, (self.flag, self.message)


def check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    """Early, clear errors for malformed inputs: a float batch in [0, 1] and matching integer labels."""
    if not torch.is_tensor(x) or not torch.is_floating_point(x) or x.dim() < 2:
        raise ValueError(f"x must be a float tensor (B, ...), got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    if not torch.is_tensor(y) or y.dim() != 1 or y.shape[0] != x.shape[0] or torch.is_floating_point(y):
        raise ValueError(f"y must be integer labels of shape ({x.shape[0]},), got "
                         f"{getattr(y, 'dtype', '')} {tuple(getattr(y, 'shape', ()))}")
    if x.numel() and not bool(torch.isfinite(x).all() and (x.min() >= 0) and (x.max() <= 1)):
        raise ValueError("x must be finite images in [0, 1]")


def check_threat(threat: object) -> None:
    """A clear, early error for a threat model given as anything but a ``ThreatModel``."""
    if not isinstance(threat, ThreatModel):
        raise TypeError(f"threat must be a robustlib.threat.ThreatModel (e.g. ThreatModel('linf', 0.3)), got "
                        f"{type(threat).__name__} {threat!r}")


def check_count(name: str, value: int, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration, then restore its previous train/eval flags."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner); positive iff misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(1) - true


def zero_jacobian(model: nn.Module, x: torch.Tensor, probes: int = 3, seed: int = 0) -> torch.Tensor:
    """Per example: is the input Jacobian of the logits exactly zero? Tested through ``probes`` random
    projections r (J^T r = 0 for random r almost surely only when J = 0)."""
    gen = torch.Generator().manual_seed(seed)
    zero = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    with eval_mode(model):
        xg = x.detach().clone().requires_grad_(True)
        out = model(xg)
        for _ in range(probes):
            r = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
            (g,) = torch.autograd.grad((out * r).sum(), xg, retain_graph=True)
            zero &= g.flatten(1).abs().amax(1) == 0
    return zero
