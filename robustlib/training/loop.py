"""The training loop: one loop for every objective.

The objective (``robustlib.regularizers``) is a weighted sum of named terms; this loop knows nothing of
any particular term. SGD with momentum and weight decay (the paper's gamma_K), the learning-rate,
eps and weight schedules of ``robustlib.training.schedules``, a checkpoint after every epoch written
atomically, exact resume, and a hard stop at the first non-finite loss.

Determinism: the model is initialized from ``seed``; every random draw of epoch ``e`` (shuffling,
augmentation, the random corners rho, attack starts) comes from a generator seeded by
``(seed, e)``. Resuming therefore needs only the weights, the optimizer state and the epoch, and a
run killed and resumed ends with the same weights as an uninterrupted one.

Diagnostics and collapse (``robustlib.training.diagnostics``): after every epoch, a run with a paper regularizer
(or ``diagnostics: true``) records the diagnostics of one fixed probe batch (the first 128 validation images) in
its history, without changing training; ``stop_on_collapse: N`` stops a run whose predictions on that batch were
one class for N consecutive epochs (``TrainResult.collapsed_epoch``: the first epoch of that streak).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustlib.data.datasets import augment_crop_flip, iterate_batches
from robustlib.evaluation.accuracy import accuracy
from robustlib.models import build_model
from robustlib.pipeline.io import save_torch
from robustlib.regularizers import Objective, Ramp, StepContext, build_objective
from robustlib.threat import ThreatModel
from robustlib.training.diagnostics import (
    PROBE_SIZE,
    constant_streak,
    epoch_diagnostics,
    probe_classes,
    wants_diagnostics,
)
from robustlib.training.schedules import PAPER_LR_KNOTS, EpsRamp, piecewise_linear

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "crop_flip")


class NonFiniteLossError(FloatingPointError):
    """Raised at the first step whose loss is NaN or infinite; no checkpoint is written from it."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (hashed for resume)."""

    model: str = "smallcnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    spectral_norm: bool = False
    objective: dict[str, Any] = field(default_factory=lambda: {"ce": 1.0})
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    lr_knots: list[list[float]] = field(default_factory=lambda: [list(k) for k in PAPER_LR_KNOTS])
    momentum: float = 0.9
    weight_decay: float = 5e-4
    norm: str = "linf"
    eps: float = 0.1
    eps_ramp: dict[str, float] | None = field(default_factory=lambda: asdict(EpsRamp()))
    gamma_ramp: dict[str, float] | None = field(default_factory=lambda: asdict(Ramp()))
    augment: str = "none"
    seed: int = 0
    init_from: str | None = None
    # added after runs were committed: left out of ``record()`` (and so of ``key()`` and the checkpoint's config)
    # at their defaults, so the committed runs' resume keys and model files are unchanged
    diagnostics: bool | None = None  # per-epoch probe diagnostics; None: on iff the objective has a paper term
    stop_on_collapse: int = 0  # stop after this many consecutive epochs of one predicted class on the probe; 0: never

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lr < 0 or self.weight_decay < 0 or not (0 <= self.momentum < 1):
            raise ValueError(f"impossible optimizer settings lr={self.lr}, weight_decay={self.weight_decay}, "
                             f"momentum={self.momentum}")
        if not (isinstance(self.stop_on_collapse, int) and not isinstance(self.stop_on_collapse, bool)
                and self.stop_on_collapse >= 0):
            raise ValueError(f"stop_on_collapse must be an integer >= 0 (0: never), got {self.stop_on_collapse!r}")
        if self.diagnostics not in (None, True, False):
            raise ValueError(f"diagnostics must be true, false or null (auto), got {self.diagnostics!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {self.augment!r}; expected one of {AUGMENTATIONS}")
        ThreatModel(self.norm, self.eps)  # validates norm and eps
        EpsRamp(**self.eps_ramp) if self.eps_ramp else None
        build_objective(self.objective, self.gamma_ramp)  # validates term names and options

    def record(self) -> dict[str, Any]:
        """The configuration as a plain dict (saved with the model), without the later-added options that are
        at their defaults (``_LATER_DEFAULTS``): a configuration that does not use them records as before."""
        out = asdict(self)
        for k, default in _LATER_DEFAULTS.items():
            if out[k] == default:
                del out[k]
        return out

    def key(self) -> str:
        """A hash of the configuration: a resume checkpoint is only used by the same configuration.
        ``diagnostics`` is left out: it cannot change training."""
        rec = self.record()
        rec.pop("diagnostics", None)
        return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def records_diagnostics(self) -> bool:
        """Whether this run records the per-epoch probe diagnostics."""
        return wants_diagnostics(self.objective) if self.diagnostics is None else bool(self.diagnostics)


_LATER_DEFAULTS: dict[str, Any] = {"diagnostics": None, "stop_on_collapse": 0}


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]
    train_seconds: float
    resumed_from_epoch: int = 0
    collapsed_epoch: int | None = None  # stop_on_collapse: the first epoch of the streak of constant predictions


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for every random draw of one epoch."""
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


def init_model(cfg: TrainConfig, device: torch.device | str = "cpu") -> nn.Module:
    """Build the model of ``cfg`` with weights drawn from ``cfg.seed`` (or loaded from ``init_from``)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spectral_norm=cfg.spectral_norm, **cfg.model_kwargs)
    if cfg.init_from:
        path = Path(cfg.init_from)
        if not path.exists():
            raise FileNotFoundError(f"init_from checkpoint {path} does not exist: train that run first")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["arch"] != model.arch:
            raise ValueError(f"init_from {path}: architecture {blob['arch']} differs from {model.arch}")
        model.load_state_dict(blob["state_dict"])
    return model.to(device)


def train(cfg: TrainConfig, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
          y_val: torch.Tensor, *, device: str | torch.device = "cpu", resume_path: str | Path | None = None,
          step_hook: Callable[[int, int], None] | None = None, progress: bool = True) -> TrainResult:
    """Train a model on ``(x_train, y_train)`` (float images in [0, 1]) following ``cfg``.

    After every epoch, the model, optimizer, epoch and history are written atomically to
    ``resume_path`` (if given); a later call with the same configuration resumes from it.
    ``step_hook(epoch, step)`` is called before every step (tests use it to interrupt a run).
    """
    device = torch.device(device)
    objective = build_objective(cfg.objective, cfg.gamma_ramp)
    eps_ramp = EpsRamp(**cfg.eps_ramp) if cfg.eps_ramp else None
    model = init_model(cfg, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    resume_path = Path(resume_path) if resume_path else None
    start_epoch, history, train_seconds = _resume(cfg, model, optimizer, resume_path, device)
    x_probe, y_probe = x_val[:PROBE_SIZE].to(device), y_val[:PROBE_SIZE].to(device)
    if (cfg.records_diagnostics or cfg.stop_on_collapse) and not len(y_probe):
        logger.warning("no validation images: no probe diagnostics and no collapse detection")
    collapsed = _collapse_start(history, cfg.stop_on_collapse)  # a resumed run that had already collapsed
    for epoch in range(start_epoch, cfg.epochs if collapsed is None else start_epoch):
        t0 = time.perf_counter()
        totals = _train_epoch(cfg, model, objective, optimizer, eps_ramp, x_train, y_train, epoch, device,
                              step_hook, progress)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        row = _epoch_row(cfg, model, objective, eps_ramp, epoch, totals, seconds, x_val, y_val, x_probe, y_probe,
                         device)
        history.append(row)
        logger.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, {k: round(v, 4) for k, v in row.items()})
        if resume_path is not None:
            save_torch({"key": cfg.key(), "epoch": epoch + 1, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "history": history, "seconds": train_seconds},
                       resume_path)
        collapsed = _collapse_start(history, cfg.stop_on_collapse)
        if collapsed is not None:
            logger.warning("stopping after epoch %d: the model has predicted one class on the probe batch since "
                           "epoch %d (stop_on_collapse %d)", epoch + 1, collapsed, cfg.stop_on_collapse)
            break
    model.eval()
    return TrainResult(model, history, train_seconds, start_epoch, collapsed)


def _resume(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, resume_path: Path | None,
            device: torch.device) -> tuple[int, list[dict[str, float]], float]:
    """Load ``resume_path``'s checkpoint of this configuration into ``model`` and ``optimizer``; return the epochs
    it completed, its history and training seconds (0, [], 0.0 without one)."""
    if resume_path is None or not resume_path.exists():
        return 0, [], 0.0
    blob = torch.load(resume_path, map_location=device, weights_only=True)
    if blob.get("key") != cfg.key():
        logger.warning("ignoring %s: it belongs to a different configuration", resume_path)
        return 0, [], 0.0
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    start_epoch, history, train_seconds = int(blob["epoch"]), list(blob["history"]), float(blob["seconds"])
    logger.info("resuming from %s after epoch %d", resume_path, start_epoch)
    return start_epoch, history, train_seconds


@dataclass
class _EpochTotals:
    """One epoch's sums of the loss and its terms over its examples, its clean-correct and seen counts, and its
    last step's learning rate, eps, fraction of training and whether that step had clean logits."""

    sums: dict[str, float]
    correct: int
    seen: int
    lr: float
    eps: float
    frac: float
    clean_logits: bool


def _train_epoch(cfg: TrainConfig, model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                 eps_ramp: EpsRamp | None, x_train: torch.Tensor, y_train: torch.Tensor, epoch: int,
                 device: torch.device, step_hook: Callable[[int, int], None] | None, progress: bool) -> _EpochTotals:
    """One epoch of SGD steps on shuffled batches, every random draw from the epoch's generator."""
    gen = epoch_generator(cfg.seed, epoch)
    model.train()
    n = int(y_train.shape[0])
    steps_per_epoch = -(-n // cfg.batch_size)
    sums: dict[str, float] = {}
    correct = seen = 0
    batches = iterate_batches(n, cfg.batch_size, gen)
    bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress, leave=False)
    for step, idx in enumerate(bar):
        if step_hook is not None:
            step_hook(epoch, step)
        global_step = epoch * steps_per_epoch + step
        frac = global_step / (cfg.epochs * steps_per_epoch)
        lr = cfg.lr * piecewise_linear(cfg.lr_knots, frac)
        for group in optimizer.param_groups:
            group["lr"] = lr
        eps = eps_ramp(cfg.eps, frac) if eps_ramp else cfg.eps
        x, y = _batch(cfg, x_train, y_train, idx, gen, device)
        ctx = StepContext(model, x, y, ThreatModel(cfg.norm, eps), frac, gen,
                          eps_fraction=eps_ramp.fraction(frac) if eps_ramp else 1.0)
        loss_value, parts = _descend(objective, optimizer, ctx, epoch, step, global_step)
        sums["loss"] = sums.get("loss", 0.0) + loss_value * len(idx)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
        if "clean" in ctx.logits:
            correct += int((ctx.logits["clean"].detach().argmax(1) == y).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{loss_value:.4f}")
    return _EpochTotals(sums, correct, seen, lr, eps, frac, "clean" in ctx.logits)


def _batch(cfg: TrainConfig, x_train: torch.Tensor, y_train: torch.Tensor, idx: torch.Tensor, gen: torch.Generator,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``idx`` (augmented as ``cfg`` says, drawing from ``gen``) on ``device``."""
    x = x_train[idx]
    if cfg.augment == "crop_flip":
        x = augment_crop_flip(x, gen)
    return x.to(device, non_blocking=True), y_train[idx].to(device, non_blocking=True)


def _descend(objective: Objective, optimizer: torch.optim.Optimizer, ctx: StepContext, epoch: int, step: int,
             global_step: int) -> tuple[float, dict[str, torch.Tensor]]:
    """One optimizer step on the objective's loss at ``ctx``; returns the loss and its terms. Raises
    ``NonFiniteLossError`` (before any parameter changes) when the loss is not finite."""
    loss, parts = objective(ctx)
    loss_value = float(loss.detach())
    if not torch.isfinite(loss.detach()):
        terms = {k: float(v) for k, v in parts.items()}
        raise NonFiniteLossError(
            f"non-finite loss {loss_value} at epoch {epoch + 1}, step {step + 1} (global step "
            f"{global_step + 1}); terms: {terms}. No checkpoint was written from this step."
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss_value, parts


def _epoch_row(cfg: TrainConfig, model: nn.Module, objective: Objective, eps_ramp: EpsRamp | None, epoch: int,
               totals: _EpochTotals, seconds: float, x_val: torch.Tensor, y_val: torch.Tensor,
               x_probe: torch.Tensor, y_probe: torch.Tensor, device: torch.device) -> dict[str, float]:
    """The history row of one epoch: schedule values, training means, validation accuracy and, as ``cfg`` asks,
    the probe batch's diagnostics or predicted classes."""
    row = {"epoch": epoch + 1, "lr": totals.lr, "eps": totals.eps, "seconds": seconds}
    row.update({f"train_{k}": v / totals.seen for k, v in totals.sums.items()})
    if totals.correct or totals.clean_logits:
        row["train_acc"] = totals.correct / totals.seen
    row["val_acc"] = accuracy(model, x_val.to(device), y_val.to(device)) if len(y_val) else float("nan")
    if len(y_probe) and cfg.records_diagnostics:
        row.update(epoch_diagnostics(model, objective, x_probe, y_probe, totals.eps, cfg.norm, totals.frac,
                                     eps_ramp.fraction(totals.frac) if eps_ramp else 1.0, cfg.seed))
    elif len(y_probe) and cfg.stop_on_collapse:
        row["probe_classes"] = probe_classes(model, x_probe)
    return row


def _collapse_start(history: list[dict[str, float]], patience: int) -> int | None:
    """With ``patience`` > 0: the first epoch of the streak of constant probe predictions ending at the last epoch,
    if that streak is ``patience`` epochs or longer; else None."""
    streak = constant_streak(history)
    return len(history) - streak + 1 if patience and streak >= patience else None


def config_from_mapping(spec: Mapping[str, Any]) -> TrainConfig:
    """Build a ``TrainConfig`` from a mapping, naming unknown keys in the error."""
    known = set(TrainConfig.__dataclass_fields__)
    bad = sorted(set(spec) - known)
    if bad:
        raise ValueError(f"unknown training settings {bad}; known: {sorted(known)}")
    return TrainConfig(**dict(spec))
