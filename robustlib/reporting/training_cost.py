"""The compute a training step costs, counted, not timed: minutes move with host load (a default-profile rerun
beside another job gave PGD-AT 39.7 training minutes against 3.83 committed), operation counts do not.

``step_flops`` counts the floating-point operations of one training step (the objective's forward work, any
inner attack's forward and backward passes, and the step's backward pass) with the formulas of
``torch.utils.flop_counter`` (convolutions and matrix products; the elementwise work they leave out is small
beside them on these networks). Its ``FlopCounterMode`` cannot be used: its module tracker fails inside
``torch.autograd.grad``, which every inner attack calls. ``passes_per_epoch`` divides by the FLOPs of one plain
cross-entropy step on the same batch (one forward and one backward pass) and multiplies by the steps of an epoch:
an epoch's cost in plain forward+backward passes over the batch, the unit of the paper's claim that its
regularizers cost "about three parallel passes" (section 4.4) while adversarial training costs one per attack
step.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from robustlib.regularizers import StepContext, build_objective
from robustlib.threat import ThreatModel
from robustlib.training.loop import TrainConfig, init_model

PROGRESS = 0.5
"""Where in training the counted step lies (fraction): mid-ramp, as the step benchmarks use. The counts do not
depend on it (shapes alone set them), only the weights of the terms do."""


class _FlopCount(TorchDispatchMode):
    """Adds up ``torch.utils.flop_counter``'s count of every operation it has a formula for."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


@contextmanager
def _eager():
    """Count the regularizers' eager form: a compiled graph hides its operations from the counter."""
    before = os.environ.get("ROBUSTLIB_COMPILE")
    os.environ["ROBUSTLIB_COMPILE"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ROBUSTLIB_COMPILE", None)
        else:
            os.environ["ROBUSTLIB_COMPILE"] = before


def step_flops(cfg: TrainConfig, seed: int = 0) -> int:
    """FLOPs of one training step of ``cfg`` (its model, objective, batch size and training eps) on a batch of
    random images of the model's input shape, backward pass included (convolutions and matrix products).
    Deterministic: the counts depend on the shapes only."""
    kw = cfg.model_kwargs
    for key in ("in_channels", "image_size", "num_classes"):
        if key not in kw:
            raise ValueError(f"step_flops: model_kwargs lacks {key!r} (use pipeline.params.run_config)")
    model = init_model(replace(cfg, init_from=None)).train()
    g = torch.Generator().manual_seed(seed)
    size = int(kw["image_size"])
    x = torch.rand(cfg.batch_size, int(kw["in_channels"]), size, size, generator=g)
    y = torch.randint(0, int(kw["num_classes"]), (cfg.batch_size,), generator=g)
    objective = build_objective(cfg.objective, cfg.gamma_ramp)
    ctx = StepContext(model, x, y, ThreatModel(cfg.norm, cfg.eps), PROGRESS, torch.Generator().manual_seed(seed + 1))
    with _eager(), _FlopCount() as counter:
        loss, _ = objective(ctx)
        loss.backward()
    return counter.total


def passes_per_step(cfg: TrainConfig) -> float:
    """``step_flops`` of ``cfg`` over that of a plain cross-entropy step of the same model and batch."""
    plain = replace(cfg, objective={"ce": 1.0}, gamma_ramp=None)
    return step_flops(cfg) / step_flops(plain)


def passes_per_epoch(cfg: TrainConfig, n_train: int) -> float:
    """An epoch of ``cfg`` on ``n_train`` images in plain forward+backward passes over its batch:
    ``passes_per_step`` times the steps of an epoch (``ceil(n_train / batch_size)``)."""
    if n_train <= 0:
        raise ValueError(f"n_train must be positive, got {n_train}")
    return passes_per_step(cfg) * -(-n_train // cfg.batch_size)
