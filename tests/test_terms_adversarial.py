"""pgd_at, fgsm_at, trades and arr: their inner maximizations against torchattacks (PGD, FGSM) and an
independent re-implementation of Wong et al.'s FGSM step from the same random start; their values
against direct KL / cross-entropy computations (torch.nn.functional.kl_div, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from robustlib.models import build_model
from robustlib.regularizers import StepContext, build_objective
from robustlib.regularizers.adversarial import pgd_points
from robustlib.threat import ThreatModel

EPS = 0.1


def setup(seed=0, b=16, dtype=torch.float32):
    torch.manual_seed(seed)
    model = build_model("smallcnn", image_size=8, width=16, num_classes=4).to(dtype)
    with torch.no_grad():
        model.layers[-1].weight.mul_(10.0)  # confident logits, so KL values are not vanishingly small
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(b, 1, 8, 8, generator=g).to(dtype)
    y = torch.randint(0, 4, (b,), generator=g)
    return model, x, y


def run(spec, model, x, y, seed=0, eps=EPS):
    obj = build_objective(spec)
    ctx = StepContext(model, x, y, ThreatModel("linf", eps), generator=torch.Generator().manual_seed(seed))
    total, parts = obj(ctx)
    return ctx, total, parts


def numpy_kl(p_logits, q_logits):
    p = F.softmax(p_logits.detach().double(), 1).numpy()
    q = F.softmax(q_logits.detach().double(), 1).numpy()
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), 1)))


def test_pgd_points_without_random_start_equal_torchattacks_pgd():
    model, x, y = setup()
    steps, alpha = 5, 0.03
    ctx = StepContext(model, x, y, ThreatModel("linf", EPS))
    ours = pgd_points(model, x, y, ctx, steps, alpha, random_start=False)
    ref = torchattacks.PGD(model, eps=EPS, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert (ours - ref).abs().max() < 1e-6


def test_pgd_at_value_is_the_cross_entropy_at_a_stronger_point_inside_the_ball():
    model, x, y = setup()
    ctx, total, parts = run({"pgd_at": {"steps": 7}}, model, x, y)
    x_adv = ctx.inputs["pgd_at"]
    assert ThreatModel("linf", EPS).contains(x_adv, x).all()
    with torch.no_grad():
        ce_adv = F.cross_entropy(model(x_adv), y, reduction="none")
        ce_clean = F.cross_entropy(model(x), y, reduction="none")
        # the same start point as the attack (ascend draws it first from the step's generator)
        start = ThreatModel("linf", EPS).random_start(x, torch.Generator().manual_seed(0))
        ce_start = F.cross_entropy(model(start), y, reduction="none")
    assert float(total.detach()) == pytest.approx(float(ce_adv.mean()), rel=1e-5)
    assert float(ce_adv.mean()) > float(ce_clean.mean()) + 0.01
    assert (ce_adv >= ce_start - 1e-5).float().mean() >= 0.9
    assert "clean" not in ctx.logits  # alone, pgd_at replaces ce: no clean pass


def test_pgd_restarts_keep_the_worst_restart_per_example():
    model, x, y = setup(b=32)
    tm = ThreatModel("linf", EPS)
    ctx = StepContext(model, x, y, tm, generator=torch.Generator().manual_seed(3))
    best = pgd_points(model, x, y, ctx, 2, None, restarts=3)
    gen = torch.Generator().manual_seed(3)
    singles = []
    for _ in range(3):
        c = StepContext(model, x, y, tm, generator=gen)
        singles.append(pgd_points(model, x, y, c, 2, None, restarts=1))
    with torch.no_grad():
        ce = lambda t: F.cross_entropy(model(t), y, reduction="none")  # noqa: E731
        losses = torch.stack([ce(s) for s in singles])
        assert torch.allclose(ce(best), losses.max(0).values, atol=1e-6)
    assert tm.contains(best, x).all()


def test_fgsm_at_is_wongs_fgsm_from_a_uniform_start():
    model, x, y = setup()
    ctx, total, _ = run({"fgsm_at": 1.0}, model, x, y, seed=5)
    # Wong et al. 2020, Alg. 1, re-implemented: delta ~ U(-eps, eps) (the step generator's first
    # draw), x + delta clipped to [0, 1]; delta += 1.25 eps sign(grad); clip to [-eps, eps] and [0, 1].
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    x0 = (x + (2 * u - 1) * EPS).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x0), y), x0)
    delta = (x0.detach() - x + 1.25 * EPS * grad.sign()).clamp(-EPS, EPS)
    ref = (x + delta).clamp(0, 1)
    assert (ctx.inputs["fgsm_at"] - ref).abs().max() < 1e-6
    with torch.no_grad():
        assert float(total.detach()) == pytest.approx(float(F.cross_entropy(model(ref), y)), rel=1e-5)


@pytest.mark.parametrize("eps", [EPS, 0.3])
def test_plain_fgsm_is_goodfellows_step_without_random_start(eps):
    """Table 3's FGSM row: x' = clip(x + eps sign(grad_x CE)) from x itself (no random start); checked
    against torchattacks.FGSM and a hand-written step; the value is the cross-entropy at x'."""
    model, x, y = setup()
    ctx, total, parts = run({"fgsm": 1.0}, model, x, y, seed=5, eps=eps)
    ref = torchattacks.FGSM(model, eps=eps)(x, y)
    assert (ctx.inputs["fgsm"] - ref).abs().max() < 1e-6
    xl = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xl), y, reduction="sum"), xl)
    manual = (x + eps * grad.sign()).clamp(0, 1)
    assert (ctx.inputs["fgsm"] - manual).abs().max() < 1e-6
    with torch.no_grad():
        assert float(total) == pytest.approx(float(F.cross_entropy(model(manual), y)), rel=1e-5)
    # deterministic: no random start, unlike fgsm_at
    ctx2, _, _ = run({"fgsm": 1.0}, model, x, y, seed=9, eps=eps)
    assert torch.equal(ctx2.inputs["fgsm"], ctx.inputs["fgsm"])


def test_trades_inner_max_increases_the_kl_and_the_value_is_the_kl():
    model, x, y = setup(b=32, dtype=torch.float64)
    spec = {"ce": 1.0, "trades": {"weight": 6.0, "steps": 10}}
    ctx, total, parts = run(spec, model, x, y, seed=2)
    x_adv = ctx.inputs["trades"]
    assert ThreatModel("linf", EPS).contains(x_adv, x).all()
    with torch.no_grad():
        clean = model(x)
        start = ThreatModel("linf", EPS).random_start(x, torch.Generator().manual_seed(2))
        assert ThreatModel("linf", EPS).contains(start, x).all()
        kl_start = F.kl_div(F.log_softmax(model(start), 1), F.softmax(clean, 1), reduction="none").sum(1)
        kl_end = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(clean, 1), reduction="none").sum(1)
        assert float(kl_end.mean()) > 2 * float(kl_start.mean())
        assert (kl_end > kl_start).float().mean() > 0.9
        ref = numpy_kl(clean, model(x_adv))
    assert ref > 1e-3
    assert float(parts["trades"]) == pytest.approx(ref, rel=1e-9)
    assert float(parts["trades"]) == pytest.approx(
        float(F.kl_div(F.log_softmax(model(x_adv).detach(), 1), F.softmax(clean, 1), reduction="batchmean")),
        rel=1e-9)
    assert float(total.detach()) == pytest.approx(float(F.cross_entropy(clean, y)) + 6.0 * ref, rel=1e-9)


def test_trades_crafts_in_eval_mode_and_restores_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    bn = model[2]
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    run({"trades": {"steps": 3}}, model, x, y)
    assert seen == [False] * 4 + [True]  # target + 3 steps in eval mode, the loss pass in train mode
    assert model.training
    assert int(bn.num_batches_tracked) == 1  # only the loss pass updated the running statistics
    seen.clear()
    run({"pgd_at": {"steps": 3}}, model, x, y)
    assert seen == [True] * 4  # pgd_at crafts in the model's current mode (Madry / Rice et al.)


@pytest.mark.parametrize("distance", ["kl", "l2"])
def test_arr_is_the_distance_to_the_fgsm_output(distance):
    model, x, y = setup()
    ctx, _, parts = run({"ce": 1.0, "arr": {"distance": distance, "steps": 1}}, model, x, y)
    ref_adv = torchattacks.FGSM(model, eps=EPS)(x, y)
    assert (ctx.inputs["arr"] - ref_adv).abs().max() < 1e-6
    with torch.no_grad():
        clean, adv = model(x), model(ref_adv)
    if distance == "kl":
        ref = numpy_kl(clean, adv)
    else:
        p, q = F.softmax(clean.double(), 1).numpy(), F.softmax(adv.double(), 1).numpy()
        ref = float(np.mean(np.sum((p - q) ** 2, 1)))
    assert ref > 1e-6
    assert float(parts["arr"]) == pytest.approx(ref, rel=1e-4)


def test_attacks_leave_parameter_grads_alone_and_follow_the_ramped_eps():
    model, x, y = setup()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    ctx, total, _ = run({"ce": 1.0, "trades": {"steps": 2}, "pgd_at": {"steps": 2}, "arr": 1.0}, model, x, y,
                        eps=0.03)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    for view in ("trades", "pgd_at", "arr"):
        assert ThreatModel("linf", 0.03).contains(ctx.inputs[view], x).all()
        assert float((ctx.inputs[view] - x).abs().max()) > 0.02
