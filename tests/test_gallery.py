"""The adversarial-example gallery: the gallery stage end to end on tiny models with the smoke profile's attack
params (small budgets), and the gallery's table, counts, agreement with the attack stage and figure on
synthetic inputs."""

from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest
import torch
import yaml

from robustlib.evaluation import schema
from robustlib.evaluation.suite import AA_L2, AA_LINF, JPEG, LPA, RECOLORADV, STADV, attack_suite
from robustlib.pipeline import params as P
from robustlib.reporting import gallery as G

matplotlib.use("Agg")

GALLERY_PROFILE = """extends: tiny
# runs that learn in the tiny profile's 2 epochs (its hamming_stability and pgd_at collapse: AutoAttack then
# spends minutes on gradient-free survivors); an L2 ball large enough that AutoAttack's first attack breaks
# every image
runs:
  standard:
    objective: {ce: 1.0}
  hamming_stability:
    objective: {ce: 1.0, hamming: {weight: 0.1, alpha: 8.0}, stability: {weight: 0.0025}}
attack: {n_test: 20, processes: 1, pgd_steps: 2, square_queries: 50, l2_eps: 5.0}
lpips: {model_kwargs: {hidden: 32}}
gallery: {runs: [standard, hamming_stability], n: 6}
"""


def test_gallery_stage_end_to_end(root, tmp_path, monkeypatch, tiny_workspace):
    """Two tiny trained runs (``GALLERY_PROFILE`` over ``conftest.TINY_PROFILE``) and a tiny LPIPS network:
    the stage writes the figure and the table; every image and every Table 1 attack of the suite has a row; a
    clean-correct image's points lie in their balls; an attack that does not apply (ReColorAdv on MNIST) has no
    prediction; a misclassified image is not attacked; the stage reads exactly the params dvc.yaml declares for
    it. (A second run gives the same bytes, seeded: not re-run here, it doubles the test's minutes.)"""
    from robustlib.evaluation.accuracy import predict
    from robustlib.pipeline import paths
    from robustlib.pipeline.io import load_model
    from robustlib.stages import gallery as stage
    from robustlib.stages import lpips, train
    from robustlib.stages.common import PARAMS_LOG

    ws = tiny_workspace(gallery=GALLERY_PROFILE)
    out = ws / "reports" / "gallery"
    for run in ("standard", "hamming_stability"):
        train.run(run, "params.yaml", "reports/gallery", progress=False)
    lpips.run("params.yaml", "reports/gallery", progress=False)
    log = tmp_path / "reads.jsonl"
    monkeypatch.setenv(PARAMS_LOG, str(log))
    result = stage.run("params.yaml", "reports/gallery")

    table = schema.load_gallery(paths.gallery_table_path(out))
    assert list(table.columns) == schema.GALLERY_COLUMNS and paths.gallery_figure_path(out).stat().st_size > 0
    params = P.load(ws / "params.yaml")
    suite = attack_suite(params["attack"], 0)
    names = [a.name for a in G.gallery_attacks(suite)]
    assert names == [AA_LINF, AA_L2, STADV, RECOLORADV, JPEG, LPA]  # the smoke profile configures them all
    assert len(table) == 2 * 6 * (1 + len(names))
    assert list(table[table[schema.RUN] == "standard"][schema.ATTACK][:1 + len(names)]) == [G.CLEAN, *names]
    for run in ("standard", "hamming_stability"):
        rows = table[table[schema.RUN] == run]
        x, y, idx = _first_images(run, 6)
        assert sorted(set(rows[schema.INDEX])) == sorted(idx)  # the attack stage's first images
        model = load_model(paths.model_path(out, run))
        clean = rows[rows[schema.ATTACK] == G.CLEAN].set_index(schema.INDEX)
        assert list(clean.loc[idx, schema.PREDICTION]) == predict(model, x).tolist()
        done = rows[rows[schema.NOT_APPLICABLE].isna() & (rows[schema.ATTACK] != G.CLEAN)]
        assert (done[schema.CORRECT] == (done[schema.PREDICTION] == done[schema.LABEL])).all()
        hit = done[done[schema.ATTACKED]]
        tol = 1e-5
        assert (hit[hit[schema.ATTACK] == AA_LINF][schema.DELTA_LINF] <= params["attack"]["linf_eps"] + tol).all()
        assert (hit[hit[schema.ATTACK] == AA_L2][schema.DELTA_L2] <= params["attack"]["l2_eps"] + tol).all()
        spared = done[~done[schema.ATTACKED]]  # misclassified: not attacked, the clean image and its prediction
        assert (spared[schema.DELTA_LINF] == 0).all() and not spared[schema.CORRECT].any()
        if rows[schema.ATTACKED].any():  # some image was attacked: ReColorAdv was tried and does not apply to grey
            ra = rows[rows[schema.ATTACK] == RECOLORADV]
            assert ra[schema.NOT_APPLICABLE].notna().all() and ra[schema.PREDICTION].isna().all()
    assert set(result["seconds"]) == {"standard", "hamming_stability"}
    assert any(table[schema.ATTACKED].fillna(False)), "the tiny models classify none of the images correctly"
    reads = {json.loads(line)["path"] for line in log.read_text().splitlines()}
    declared = set(yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["gallery"]["params"])
    assert all(any(r == d or r.startswith(d + ".") for d in declared) for r in reads), reads
    assert all(any(r == d or r.startswith(d + ".") for r in reads) for d in declared), declared


def _first_images(run: str, n: int):
    """The first ``n`` images of a run's split, as the stage takes them (the working directory: the workspace)."""
    from robustlib.stages.common import setup, test_examples

    return test_examples(setup("params.yaml", "reports/gallery"), run, n)


def _run(name: str, correct: list[bool], eps: float = 0.08, channels: int = 1) -> G.GalleryRun:
    """A synthetic gallery: 2 images, labels 3 and 5; AutoAttack L-inf moves the attacked ones by +eps."""
    x = torch.full((2, channels, 8, 8), 0.5)
    y = torch.tensor([3, 5])
    attacked = torch.tensor(correct)
    clean = torch.where(attacked, y, torch.tensor([1, 1]))
    points = {AA_LINF: torch.where(attacked.view(2, 1, 1, 1), x + eps, x)}
    return G.GalleryRun(name, x, y, [7, 9], {G.CLEAN: clean, AA_LINF: torch.tensor([0, 1])}, points, attacked,
                        {RECOLORADV: "ReColorAdv needs 3-channel RGB images"})


def _suite(root):
    return attack_suite(P.load(root / "params.yaml")["attack"], 0)


def test_gallery_table_counts_and_agreement(root):
    suite = _suite(root)
    attacks = [suite[AA_LINF], suite[RECOLORADV]]
    table = G.gallery_table([_run("a", [True, True]), _run("b", [True, False])], attacks)
    assert len(table) == 2 * 2 * 3
    a = table[table[schema.RUN] == "a"].set_index([schema.INDEX, schema.ATTACK])
    assert a.loc[(7, AA_LINF), schema.PREDICTION] == 0 and not a.loc[(7, AA_LINF), schema.CORRECT]
    assert a.loc[(7, AA_LINF), schema.DELTA_LINF] == pytest.approx(0.08)
    assert a.loc[(7, AA_LINF), schema.DELTA_L2] == pytest.approx(0.08 * 8)  # 64 entries of 0.08
    assert pd.isna(a.loc[(7, RECOLORADV), schema.PREDICTION]) and "RGB" in a.loc[(7, RECOLORADV), schema.NOT_APPLICABLE]
    b = table[table[schema.RUN] == "b"].set_index([schema.INDEX, schema.ATTACK])
    assert not b.loc[(9, AA_LINF), schema.ATTACKED] and b.loc[(9, AA_LINF), schema.DELTA_LINF] == 0
    counts = G.counts(table).set_index(schema.RUN)
    assert counts.loc["a", G.CLEAN] == "2/2" and counts.loc["a", AA_LINF] == "0/2"
    assert counts.loc["b", G.CLEAN] == "1/2" and counts.loc["a", RECOLORADV] == "n/a"
    stage = pd.DataFrame({schema.INDEX: [7, 9], schema.CLEAN: [True, True],
                          schema.robust(AA_LINF): [False, True]})
    agree, compared = G.attack_stage_agreement(table, {"a": stage})
    assert compared == 4 and agree == 3  # clean 7, 9 agree; AA on 7 agrees (broken); on 9 the stage says robust


def test_gallery_table_round_trips(root, tmp_path):
    table = G.gallery_table([_run("a", [True, False])], [_suite(root)[AA_LINF]])
    schema.save_gallery(table, tmp_path / "g.csv")
    back = schema.load_gallery(tmp_path / "g.csv")
    assert back[schema.CORRECT].dtype == "boolean" and back[schema.PREDICTION].dtype == "Int64"
    pd.testing.assert_frame_equal(back, table, check_exact=False, atol=1e-6)


@pytest.mark.parametrize("max_abs,factor", [(0.0, 1), (1e-8, 1), (0.3, 1), (0.6, 1), (0.2, 2), (0.031373, 10),
                                            (0.09, 5), (0.004, 100), (0.25, 2), (0.26, 1)])
def test_amplification_is_the_largest_1_2_5_step_that_stays_visible(max_abs, factor):
    assert G.amplification(max_abs) == factor
    if max_abs > G.NEGLIGIBLE and max_abs < G.AMPLIFY_TARGET:
        assert factor * max_abs <= G.AMPLIFY_TARGET


def test_gallery_figure_shows_predictions_perturbations_and_na(root):
    suite = _suite(root)
    attacks = [suite[AA_LINF], suite[RECOLORADV]]
    fig = G.gallery_figure([_run("a", [True, True]), _run("b", [True, False])], attacks, "cifar10")
    texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert {"a", "b"} <= set(texts)
    assert "n/a" in texts and any("x5" in t for t in texts)  # AA L-inf moved by 0.08: drawn x5
    assert any(t.startswith("cat ") for t in texts)  # CIFAR-10 label 3 by name
    assert any("not\nattacked" in t for t in texts)  # b's second image is misclassified
    assert any(t.startswith("AutoAttack L-inf\neps ") for t in texts)
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2 * (2 + 2 * 2) - 1  # per run: 2 clean + 2 x (image, perturbation); b spares one
    matplotlib.pyplot.close(fig)


def test_the_factor_follows_most_of_the_perturbation_not_its_largest_pixel():
    spread = torch.full((2, 1, 10, 10), 0.02)
    spread[0, 0, 0, 0] = 0.9  # an L2 attack may move one pixel far
    assert G.perturbation_size([spread]) == pytest.approx(0.02)
    assert G.amplification(G.perturbation_size([spread])) == 20  # the largest pixel alone would give 1
    assert G.perturbation_size([]) == 0.0 and G.perturbation_size([torch.zeros(0, 1, 4, 4)]) == 0.0
