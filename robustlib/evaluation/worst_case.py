"""Worst-case, per-example robustness evaluation: the engine of the attack stage, the robustness curves
(``robustlib.evaluation.curves``) and the verify stage's AutoAttack.

``evaluate_attacks`` runs named attacks (e.g. those of ``robustlib.evaluation.suite``) and returns the
per-example table of ``robustlib.evaluation.schema`` (``robust_<attack>``, ``worst_<threat>``,
``robust_all`` = clean-correct AND every attack failed, DESIGN.md convention 9). Flags come from a fresh
eval-mode forward on the returned points.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from functools import partial

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from robustlib.attacks.common import Attack, AttackResult, NotApplicable, check_count, check_inputs, eval_mode
from robustlib.evaluation import schema
from robustlib.evaluation.accuracy import predict
from robustlib.evaluation.checks import check_points
from robustlib.pipeline.parallel import imap
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)


def evaluate_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Mapping[str, Attack],
                     index: Sequence[int] | None = None, threats: Mapping[str, ThreatModel] | None = None,
                     groups: Mapping[str, str] | None = None, points: dict[str, torch.Tensor] | None = None,
                     batch_size: int = 500, seed: int = 0, processes: int = 1) -> pd.DataFrame:
    """Run every attack and tabulate per-example robustness (see module docstring).

    ``threats[name]``, if given, is checked on that attack's points (finite, [0, 1], in the ball).
    ``groups`` (attack -> threat model name) adds the per-example worst case ``worst_<threat>`` of
    each threat model. An attack raising ``NotApplicable`` gets no column; its reason is logged and
    kept in ``table.attrs["not_applicable"]``; each attack's wall seconds are in
    ``table.attrs["seconds"]`` and the scalars of its ``AttackResult.info`` in ``table.attrs["info"]``
    (``scalar_info``: tensors are dropped in the worker, before its result is pickled back).
    ``points``, if a dict, receives each attack's points. The global torch RNG is seeded with ``seed``
    before each attack, so results do not depend on the order attacks run in.

    ``processes > 1`` (CPU only) runs the attacks in that many forked worker processes
    (``robustlib.pipeline.parallel.imap``), one torch thread each: AutoAttack's Square and the perceptual
    attacks are bound by Python overhead, so two attacks side by side use two cores where one cannot.
    """
    check_inputs(x, y)
    for name in attacks:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"attack names must be alphanumeric (with - or _), got {name!r}")
    processes = check_count("processes", processes, 1)
    index = list(range(len(y))) if index is None else [int(i) for i in index]
    if len(index) != len(y):
        raise ValueError(f"index has {len(index)} entries for {len(y)} examples")
    with eval_mode(model):
        clean = (predict(model, x, batch_size) == y.to("cpu")).cpu()
    table = pd.DataFrame({schema.INDEX: index, schema.CLEAN: clean.numpy()})
    n_a: dict[str, str] = {}
    seconds: dict[str, float] = {}
    info: dict[str, dict] = {}
    robust_all = clean.clone()
    run = partial(_run_attack, model, x, y, dict(attacks), int(seed))
    jobs = imap(run, list(attacks), processes if x.device.type == "cpu" else 1)
    for name, result, reason, secs in tqdm(jobs, total=len(attacks), desc="attacks", leave=False):
        if reason is not None:
            logger.info("%s: n/a (%s)", name, reason)
            n_a[name] = reason
            continue
        seconds[name] = secs
        info[name] = result.info
        x_adv = result.points
        if threats and name in threats:
            check_points(x, x_adv, threats[name], name)
        with eval_mode(model):
            robust = clean & (predict(model, x_adv, batch_size) == y.to("cpu")).cpu()
        table[schema.robust(name)] = robust.numpy()
        robust_all &= robust
        if points is not None:
            points[name] = x_adv.detach()
        logger.info("%s: robust accuracy %.4f (%.1f s)", name, float(robust.float().mean()), seconds[name])
    if groups:
        schema.add_worst_cases(table, groups)
    table[schema.ALL] = robust_all.numpy()
    table.attrs.update(not_applicable=n_a, seconds=seconds, info=info)
    return table


def _run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Mapping[str, Attack], seed: int,
                name: str) -> tuple[str, AttackResult | None, str | None, float]:
    """One attack, the global torch RNG seeded with ``seed``: (name, result or None, n/a reason or None,
    seconds)."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            result, reason = attacks[name](model, x, y), None
        except NotApplicable as err:
            result, reason = None, str(err)
    if result is not None and not isinstance(result, AttackResult):
        raise TypeError(f"attack {name!r} returned {type(result).__name__}, not an AttackResult")
    if result is not None:  # only the scalars go back (a worker pickles its result; flows, offsets stay here)
        result = AttackResult(result.points, scalar_info(result.info))
    return name, result, reason, round(time.perf_counter() - t0, 2)


def scalar_info(info: Mapping[str, object]) -> dict[str, bool | int | float | str]:
    """The scalar entries of an ``AttackResult.info`` (what the results keep; tensors such as StAdv's
    flow are dropped)."""
    return {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str))}
