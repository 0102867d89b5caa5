"""``verify``: complete verification of a batch of examples (``robustlib.verification.cascade.verify_one``
per example, optionally in forked workers), with its results persisted per block of examples (a shard) as
each block finishes, so that an interrupted run resumes.

A shard is ``<shard_dir>/<key[:24]>-<start:07d>.pt``, a ``torch.save`` of ``{"key", "start", "results"}``
(each result a ``VerifyResult`` as a dict, its counterexample a CPU tensor or ``None``), written atomically
(``robustlib.pipeline.io.save_torch``). ``key`` (``verify_key``) hashes the whole computation (weights,
examples, given counterexamples, settings, solver and its options), so a shard is reused only by the same
computation; an unreadable or mismatching shard is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlib.bounds.intervals import BOUND_METHODS, to_sequential
from robustlib.bounds.tolerance import MARGIN_ATOL, MARGIN_RTOL
from robustlib.pipeline import parallel
from robustlib.pipeline.io import save_torch
from robustlib.threat import NORMS
from robustlib.verification.cascade import VerifyResult, verify_one
from robustlib.verification.encoding import MILPEncoder
from robustlib.verification.solvers import require_solver, solver_settings

logger = logging.getLogger(__name__)

__all__ = ["verify", "verify_key"]


def _hash_tensor(h, t: Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def verify_key(model: nn.Module, x: Tensor, y: Tensor, counterexamples: Sequence[Tensor | None],
               settings: dict) -> str:
    """A hash of everything that determines ``verify``'s results: the weights, the examples, the given
    counterexamples and the settings (a shard is reused only by the same computation)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, t)
    _hash_tensor(h, x.float())
    _hash_tensor(h, y.long())
    for c in counterexamples:
        _hash_tensor(h, None if c is None else c.float())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _shard_file(shard_dir: Path, key: str, start: int) -> Path:
    return shard_dir / f"{key[:24]}-{start:07d}.pt"


def _save_shard(path: Path, key: str, start: int, results: Sequence[VerifyResult]) -> None:
    """Write a shard atomically: complete or absent. Through a file object (``save_torch``) the zip's root
    folder is always ``archive``, so the same results give the same bytes (torch names it after the file
    otherwise); the records inside, and what ``_load_shard`` reads, are those of every earlier shard."""
    blob = {"key": key, "start": start, "results": [
        {**{k: v for k, v in asdict(r).items() if k != "counterexample"},
         "counterexample": None if r.counterexample is None else r.counterexample.detach().cpu().clone()}
        for r in results]}
    save_torch(blob, path)


def _load_shard(path: Path, key: str, start: int, n: int) -> list[VerifyResult] | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file is recomputed, never trusted
        logger.warning("ignoring unreadable shard %s: %s", path, err)
        return None
    if blob.get("key") != key or blob.get("start") != start or len(blob.get("results", ())) != n:
        return None
    return [VerifyResult(**r) for r in blob["results"]]


def _load_shards(shard_dir: Path, key: str, n: int, shard_size: int) -> list[VerifyResult | None]:
    """The results of every finished shard of this computation, ``None`` for the examples still to do."""
    results: list[VerifyResult | None] = [None] * n
    for s in range(0, n, shard_size):
        e = min(s + shard_size, n)
        loaded = _load_shard(_shard_file(shard_dir, key, s), key, s, e - s)
        if loaded is not None:
            results[s:e] = loaded
    done = sum(r is not None for r in results)
    if done:
        logger.info("verify: %d of %d examples loaded from shards in %s", done, n, shard_dir)
    return results


def _save_finished_shard(shard_dir: Path, key: str, results: Sequence[VerifyResult | None], i: int,
                         shard_size: int) -> None:
    """Save the shard holding example ``i`` once all its examples are done (and it is not saved yet)."""
    s = (i // shard_size) * shard_size
    e = min(s + shard_size, len(results))
    if all(r is not None for r in results[s:e]) and not _shard_file(shard_dir, key, s).exists():
        _save_shard(_shard_file(shard_dir, key, s), key, s, results[s:e])


def _check_inputs(model, x, y, eps, norm, time_limit, processes, bounds, solver="highs", margin_atol=MARGIN_ATOL,
                  margin_rtol=MARGIN_RTOL, shard_size=1):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (time_limit > 0):
        raise ValueError(f"time_limit must be > 0, got {time_limit}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if bounds not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {bounds!r}; expected one of {BOUND_METHODS}")
    require_solver(solver)
    if not (math.isfinite(margin_atol) and math.isfinite(margin_rtol) and margin_atol >= 0 and margin_rtol >= 0):
        raise ValueError(f"margin_atol and margin_rtol must be finite and >= 0, got {margin_atol!r}, {margin_rtol!r}")
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (B, ...) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(x).all() or bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError("inputs must be finite and lie in [0, 1]")
    net = to_sequential(model)
    with torch.no_grad():
        try:
            out = net(x[:1].float())
        except RuntimeError as err:
            raise ValueError(f"input shape {tuple(x.shape[1:])} does not fit the network: {err}") from err
    if out.dim() != 2:
        raise ValueError(f"the network must output logits (B, C), got {tuple(out.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
        raise ValueError(f"labels must be in [0, {out.shape[1]})")
    return net


def verify(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf", time_limit: float = 60.0,
           processes: int = 1, counterexamples: Tensor | Sequence[Tensor | None] | None = None,
           bounds: str = "linear", attack_steps: int = 20, solver: str = "highs",
           margin_atol: float = MARGIN_ATOL, margin_rtol: float = MARGIN_RTOL, margin_float32: bool = False,
           seed: int = 0, progress: bool = True, shard_dir: str | os.PathLike | None = None,
           shard_size: int = 50) -> list[VerifyResult]:
    """Complete verification (Tjeng et al. 2019) of ``model`` at each ``(x[i], y[i])`` for the
    ``norm`` ball of radius ``eps`` intersected with [0, 1]; one ``VerifyResult`` per example.

    ``model``: robustlib's MLP/SmallCNN/CWCNN or an ``nn.Sequential`` of Normalize/Flatten/Linear/
    Conv2d/ReLU/MaxPool2d (kernel == stride), evaluated in eval mode; ``x`` in [0, 1].
    ``counterexamples``: optional candidate points (e.g. from attacks), replayed first.
    ``bounds``: ``"linear"`` (progressive CROWN) or ``"interval"`` (IBP) for certification and the
    big-M constants. ``attack_steps``: PGD steps tried before the MILP (0 = none). ``solver``:
    ``"highs"`` or ``"scip"`` (the same encoding; options in ``HIGHS_OPTIONS`` / ``SCIP_PARAMS``).
    ``margin_atol``, ``margin_rtol``, ``margin_float32``: the numerical tolerance
    (``robustlib.bounds.tolerance.margin_tolerance``) a proven margin must exceed. ``time_limit``:
    seconds per example, whole example. ``processes > 1``: forked workers
    (``robustlib.pipeline.parallel.imap``), one torch thread each.
    ``shard_dir``: results are saved there per block of ``shard_size`` examples as each block
    finishes, under a hash of the whole computation (``verify_key``); a later call with the same
    inputs loads the finished blocks instead of recomputing them (resume after a kill).
    L2: bounds only (the encoding has no quadratic constraints), then ``unknown``.
    """
    net = _check_inputs(model, x, y, eps, norm, time_limit, processes, bounds, solver, margin_atol, margin_rtol,
                        shard_size)
    if counterexamples is not None and len(counterexamples) != len(y):
        raise ValueError(f"counterexamples must have one entry per example ({len(y)}), got {len(counterexamples)}")
    ces = [None] * len(y) if counterexamples is None else [None if c is None else c.detach().cpu()
                                                            for c in counterexamples]
    kw = dict(eps=float(eps), norm=norm, time_limit=float(time_limit), bounds=bounds, attack_steps=int(attack_steps),
              solver=solver, margin_atol=float(margin_atol), margin_rtol=float(margin_rtol),
              margin_float32=bool(margin_float32), seed=int(seed))
    was = model.training
    model.eval()
    try:
        xs, ys = x.detach().cpu().float(), [int(v) for v in y]
        results: list[VerifyResult | None] = [None] * len(ys)
        if shard_dir is not None:
            shard_dir = Path(shard_dir)
            key = verify_key(model, xs, y.detach().cpu(), ces, {**kw, "solver_settings": solver_settings(solver)})
            results = _load_shards(shard_dir, key, len(ys), shard_size)
        todo = [i for i in range(len(ys)) if results[i] is None]
        enc = MILPEncoder(net, tuple(x.shape[1:])) if norm == "linf" and todo else None

        def one(i: int) -> tuple[int, VerifyResult]:
            return i, verify_one(model, xs[i], ys[i], counterexample=ces[i], encoder=enc, **kw)

        for i, res in tqdm(parallel.imap(one, todo, processes), total=len(todo), desc="verify",
                           disable=not progress):
            results[i] = res
            if shard_dir is not None:
                _save_finished_shard(shard_dir, key, results, i, shard_size)
        return [r for r in results if r is not None]
    finally:
        model.train(was)
