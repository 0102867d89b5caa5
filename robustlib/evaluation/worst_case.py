"""Worst-case, per-example robustness evaluation used by the attack stage.

``evaluate_attacks`` runs named attacks and returns the per-example table of ``robustlib.evaluation.schema``
(``robust_<attack>``, ``worst_<threat>``, ``robust_all`` = clean-correct AND every attack failed,
DESIGN.md convention 9). Flags come from a fresh eval-mode forward on the returned points.
``robustness_curve`` gives robust accuracy against eps as a tidy table (norm, eps, attack, robust_acc).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from robustlib.attacks import autoattack as run_autoattack
from robustlib.attacks import fgsm, pgd
from robustlib.attacks.common import AttackResult, NotApplicable, check_count, check_inputs, eval_mode
from robustlib.evaluation import schema
from robustlib.evaluation.accuracy import predict
from robustlib.evaluation.checks import check_points
from robustlib.pipeline.parallel import imap
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], AttackResult]
"""``attack(model, x, y) -> AttackResult`` with every other setting bound (e.g. ``functools.partial``)."""


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


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps_grid: Sequence[float],
                     steps: int = 20, restarts: int = 10, autoattack: bool = False, with_fgsm: bool = True,
                     seed: int = 0, aa_version: str = "standard", batch_size: int = 1000) -> pd.DataFrame:
    """Robust accuracy against eps: PGD (``steps`` x ``restarts``, step 2.5 eps / steps), optionally FGSM
    and AutoAttack, as a tidy table with columns norm, eps, attack, robust_acc (attack is ``pgd``,
    ``fgsm``, ``autoattack`` or ``pgd_nested``). Every point is checked to lie in its ball.
    ``pgd_nested`` is the per-example worst case of PGD over every eps' <= eps of the grid (a point of a
    smaller ball lies in the larger one): the strongest PGD number at each eps, non-increasing by
    construction. ``pgd`` is PGD at that eps alone; where it rises with eps the attack lost strength at
    the larger radius (gradient masking), which the attack stage records as a flag."""
    eps_grid = sorted(float(e) for e in eps_grid)
    for e in eps_grid:
        ThreatModel(norm, e)  # validates norm and eps before any compute
    rows = []
    broken = torch.zeros(x.shape[0], dtype=torch.bool)  # broken by PGD at some eps' <= eps (the balls are nested)
    for eps in tqdm(eps_grid, desc=f"{norm} curve", leave=False):
        threat = ThreatModel(norm, eps)
        attacks: dict[str, Attack] = {
            "pgd": partial(pgd, threat=threat, steps=steps, restarts=restarts, batch_size=batch_size,
                           generator=torch.Generator(device=x.device).manual_seed(seed))}
        if with_fgsm:
            attacks["fgsm"] = partial(fgsm, threat=threat)
        if autoattack:
            attacks["autoattack"] = partial(run_autoattack, threat=threat, version=aa_version, seed=seed)
        table = evaluate_attacks(model, x, y, attacks, threats={k: threat for k in attacks})
        for name in attacks:
            rows.append({"norm": norm, "eps": eps, "attack": name,
                         "robust_acc": float(table[schema.robust(name)].mean())})
        broken |= ~schema.flags(table, schema.robust("pgd"))
        rows.append({"norm": norm, "eps": eps, "attack": "pgd_nested", "robust_acc": float((~broken).float().mean())})
    return pd.DataFrame(rows, columns=["norm", "eps", "attack", "robust_acc"])


def robustness_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grids: Mapping[str, Sequence[float]],
                      steps: int, restarts: int, seed: int, batch_size: int) -> pd.DataFrame:
    """``robustness_curve`` (PGD and FGSM) for each norm's eps grid, as one tidy table (the attack
    stage's Figure 2 data)."""
    return pd.concat([robustness_curve(model, x, y, norm, grid, steps=steps, restarts=restarts, seed=seed,
                                       batch_size=batch_size) for norm, grid in eps_grids.items()], ignore_index=True)
