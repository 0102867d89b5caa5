"""Worst-case, per-example robustness evaluation used by the attack stage.

``evaluate_attacks`` runs named attacks and returns one row per example: ``index`` (test index),
``clean_correct``, ``robust_<attack>`` per attack, and ``robust_all`` = clean-correct AND every attack
failed (DESIGN.md convention 9). Flags come from a fresh eval-mode forward on the returned points.
``robustness_curve`` gives robust accuracy against eps as a tidy table (norm, eps, attack, robust_acc).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from robustlib.attacks import autoattack as run_autoattack
from robustlib.attacks import fgsm, pgd
from robustlib.attacks.common import NotApplicable, check_count, check_inputs, eval_mode
from robustlib.checks import check_points
from robustlib.evaluate import predict
from robustlib.io import atomic_write
from robustlib.parallel import forked_pool
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``attack(model, x, y) -> x_adv`` with every other setting bound (e.g. ``functools.partial``)."""


def evaluate_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Mapping[str, Attack],
                     index: Sequence[int] | None = None, threats: Mapping[str, ThreatModel] | None = None,
                     points: dict[str, torch.Tensor] | None = None, batch_size: int = 500, seed: int = 0,
                     processes: int = 1) -> pd.DataFrame:
    """Run every attack and tabulate per-example robustness (see module docstring).

    ``threats[name]``, if given, is checked on that attack's points (finite, [0, 1], in the ball).
    An attack raising ``NotApplicable`` gets no column; its reason is logged and kept in
    ``table.attrs["not_applicable"]``; each attack's wall seconds are in ``table.attrs["seconds"]``.
    ``points``, if a dict, receives each attack's points. The global torch RNG is seeded with ``seed``
    before each attack, so results do not depend on the order attacks run in.

    ``processes > 1`` (CPU only) runs the attacks in that many forked worker processes, one torch
    thread each: AutoAttack's Square and the perceptual attacks are bound by Python overhead, so two
    attacks side by side use two cores where one attack cannot. An attack given as a
    ``functools.partial`` with a ``record`` dict keyword gets that dict updated from the worker.
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
    table = pd.DataFrame({"index": index, "clean_correct": clean.numpy()})
    n_a: dict[str, str] = {}
    seconds: dict[str, float] = {}
    robust_all = clean.clone()
    outcomes = _run_attacks(model, x, y, attacks, seed, processes if x.device.type == "cpu" else 1)
    for name, attack in attacks.items():
        x_adv, reason, secs, record = outcomes[name]
        if record is not None:
            attack.keywords["record"].update(record)
        if reason is not None:
            logger.info("%s: n/a (%s)", name, reason)
            n_a[name] = reason
            continue
        seconds[name] = secs
        if threats and name in threats:
            check_points(x, x_adv, threats[name], name)
        with eval_mode(model):
            robust = clean & (predict(model, x_adv, batch_size) == y.to("cpu")).cpu()
        table[f"robust_{name}"] = robust.numpy()
        robust_all &= robust
        if points is not None:
            points[name] = x_adv.detach()
        logger.info("%s: robust accuracy %.4f (%.1f s)", name, float(robust.float().mean()), seconds[name])
    table["robust_all"] = robust_all.numpy()
    table.attrs["not_applicable"] = n_a
    table.attrs["seconds"] = seconds
    return table


_JOB: dict = {}  # what forked attack workers inherit: model, x, y, attacks, seed


def _attack_job(name: str) -> tuple[str, torch.Tensor | None, str | None, float, dict | None]:
    """Run one attack of ``_JOB``: (name, points or None, n/a reason or None, seconds, record or None)."""
    attack = _JOB["attacks"][name]
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_JOB["seed"])
        try:
            x_adv, reason = attack(_JOB["model"], _JOB["x"], _JOB["y"]).detach(), None
        except NotApplicable as err:
            x_adv, reason = None, str(err)
    record = getattr(attack, "keywords", {}).get("record")
    return name, x_adv, reason, round(time.perf_counter() - t0, 2), record


def _run_attacks(model, x, y, attacks: Mapping[str, Attack], seed: int, processes: int) -> dict[str, tuple]:
    _JOB.update(model=model, x=x, y=y, attacks=dict(attacks), seed=int(seed))
    try:
        if processes == 1 or len(attacks) == 1:
            jobs = map(_attack_job, attacks)
            return {out[0]: out[1:] for out in tqdm(jobs, total=len(attacks), desc="attacks", leave=False)}
        with forked_pool(processes) as pool:
            jobs = pool.imap_unordered(_attack_job, attacks, chunksize=1)
            return {out[0]: out[1:] for out in tqdm(jobs, total=len(attacks), desc="attacks", leave=False)}
    finally:
        _JOB.clear()


def save_results(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a per-example table as CSV (atomically)."""
    atomic_write(path, lambda p: table.to_csv(p, index=False))


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-example table written by ``save_results`` (boolean columns restored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: run the attack stage first (`dvc repro`)")
    table = pd.read_csv(path)
    for col in table.columns:
        if col == "clean_correct" or col.startswith("robust_"):
            table[col] = table[col].astype(bool)
    return table


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
            "pgd": partial(pgd, eps=eps, norm=norm, steps=steps, restarts=restarts, batch_size=batch_size,
                           generator=torch.Generator(device=x.device).manual_seed(seed))}
        if with_fgsm:
            attacks["fgsm"] = partial(fgsm, eps=eps, norm=norm)
        if autoattack:
            attacks["autoattack"] = partial(run_autoattack, eps=eps, norm=norm, version=aa_version, seed=seed)
        table = evaluate_attacks(model, x, y, attacks, threats={k: threat for k in attacks})
        for name in attacks:
            rows.append({"norm": norm, "eps": eps, "attack": name,
                         "robust_acc": float(table[f"robust_{name}"].mean())})
        robust = torch.as_tensor(table["robust_pgd"].to_numpy(dtype=bool))
        broken |= ~robust
        rows.append({"norm": norm, "eps": eps, "attack": "pgd_nested", "robust_acc": float((~broken).float().mean())})
    return pd.DataFrame(rows, columns=["norm", "eps", "attack", "robust_acc"])


def robustness_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grids: Mapping[str, Sequence[float]],
                      steps: int, restarts: int, seed: int, batch_size: int) -> pd.DataFrame:
    """``robustness_curve`` (PGD and FGSM) for each norm's eps grid, as one tidy table (the attack
    stage's Figure 2 data)."""
    return pd.concat([robustness_curve(model, x, y, norm, grid, steps=steps, restarts=restarts, seed=seed,
                                       batch_size=batch_size) for norm, grid in eps_grids.items()], ignore_index=True)
