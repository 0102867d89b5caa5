"""The gallery stage: the first ``gallery.n`` test images of the attack stage's evaluation order, for each
run of ``gallery.runs``, clean and under each attack of the paper's Table 1 that the ``attack`` params
configure, built by ``robustlib.evaluation.suite.attack_suite`` from those params as the attack stage
builds its suite (the lpips stage's LPIPS network for LPA) and run by its engine
(``robustlib.evaluation.worst_case.evaluate_attacks``); the figure and table: ``robustlib.reporting.gallery``.

Outputs: ``figures/gallery.png`` and ``tables/gallery.csv`` (``robustlib.pipeline.paths.gallery_figure_path``,
``gallery_table_path``). It reads the runs' models and splits and the LPIPS network, never the attack stage's
results, so adding it re-runs no attack stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustlib.attacks.common import eval_mode
from robustlib.data.datasets import Split
from robustlib.evaluation import schema
from robustlib.evaluation.accuracy import predict
from robustlib.evaluation.suite import AttackSuite, attack_suite, needs_lpips
from robustlib.evaluation.worst_case import evaluate_attacks
from robustlib.pipeline import paths
from robustlib.pipeline.io import load_model
from robustlib.reporting import gallery
from robustlib.reporting.plots import save_figure
from robustlib.stages.common import setup, test_examples

logger = logging.getLogger(__name__)


def run(params_file: str = "params.yaml", output_root: str = ".") -> dict[str, Any]:
    """Attack the gallery's images of each gallery run; write the figure and the table; return both and the
    seconds per run."""
    env = setup(params_file, output_root, "gallery")
    gp, ap, seed = env.params["gallery"], env.params["attack"], int(env.params["base"]["seed"])
    runs, n = list(gp["runs"]), int(gp["n"])
    lpips_path = paths.lpips_model_path(env.out)  # the attack stage's LPIPS network, loaded as it loads it
    if needs_lpips(ap) and not lpips_path.exists():
        raise FileNotFoundError(f"the NPTM attacks need the LPIPS network at {lpips_path}: run the lpips stage "
                                "first (`dvc repro lpips`)")
    lpips_net = load_model(lpips_path).to(env.device) if needs_lpips(ap) else None
    suite = attack_suite(ap, seed, env.device, lpips_net=lpips_net)
    galleries, seconds = [], {}
    for run in runs:
        t0 = time.perf_counter()
        model = load_model(paths.model_path(env.out, run)).to(env.device)
        x, y, idx = test_examples(env, run, n)
        galleries.append(_attack_images(run, model, x.to(env.device), y.to(env.device), idx, suite))
        seconds[run] = round(time.perf_counter() - t0, 2)
        logger.info("gallery %s: %d images, %.1f s", run, len(idx), seconds[run])
    attacks = gallery.gallery_attacks(suite)
    table = gallery.gallery_table(galleries, attacks)
    schema.save_gallery(table, paths.gallery_table_path(env.out))
    dataset = Split.load(paths.split_path(env.out, runs[0])).dataset
    figure = save_figure(gallery.gallery_figure(galleries, attacks, dataset), paths.gallery_figure_path(env.out))
    return {"table": table, "figure": figure, "seconds": seconds}


def _attack_images(run: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: Sequence[int],
                   suite: AttackSuite) -> gallery.GalleryRun:
    """The gallery's attacks (``gallery.gallery_attacks``) on the images of ``x`` the model classifies
    correctly, as the attack stage runs its suite (its engine, seed, batch size and worker processes), and the
    prediction on every returned point. A misclassified image is not attacked: its point is the clean image,
    which every attack returns for it (``AttackResult``); StAdv fails on a batch with no correct image. With
    no image correct no attack runs, and which attacks would not apply is then not known."""
    attacks = {a.name: a for a in gallery.gallery_attacks(suite)}
    with eval_mode(model):
        clean = predict(model, x, suite.batch_size)
    attacked = clean == y.detach().cpu()
    points = {name: x.detach().cpu().clone() for name in attacks}
    not_applicable: dict[str, str] = {}
    if attacked.any():
        sel = attacked.nonzero().flatten()
        found: dict[str, torch.Tensor] = {}
        table = evaluate_attacks(model, x[sel.to(x.device)], y[sel.to(y.device)], attacks,
                                 index=[int(index[i]) for i in sel],
                                 threats={n: a.threat for n, a in attacks.items() if a.threat is not None},
                                 points=found, batch_size=suite.batch_size, seed=suite.seed,
                                 processes=suite.processes_on(x.device))
        not_applicable = dict(table.attrs.get("not_applicable", {}))
        for name in not_applicable:
            points.pop(name)
        for name, p in found.items():
            points[name][sel] = p.detach().cpu()
    with eval_mode(model):
        predictions = {gallery.CLEAN: clean, **{n: predict(model, p, suite.batch_size) for n, p in points.items()}}
    return gallery.GalleryRun(run, x.detach().cpu(), y.detach().cpu(), [int(i) for i in index], predictions,
                              points, attacked, not_applicable)
