"""margin (multi-class hinge) against torch.nn.MultiMarginLoss and a brute-force loop; lipschitz_margin
against the closed form on a linear network (L = ||W||_2 / std) and its parameter gradient against
finite differences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlib.bounds.lipschitz import lipschitz_upper_bound
from robustlib.models import build_model
from robustlib.regularizers import StepContext, build_objective, multiclass_hinge
from robustlib.regularizers.margins import LipschitzMargin
from robustlib.threat import ThreatModel


def logits_and_labels(b=7, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g, dtype=torch.float64) * 2, torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("m", [0.0, 0.5, 2.0])
def test_weston_watkins_matches_torch_multimargin_loss(m):
    z, y = logits_and_labels()
    ref = nn.MultiMarginLoss(margin=m, reduction="none")(z, y) * z.shape[1]  # torch divides by C
    assert torch.allclose(multiclass_hinge(z, y, m, "weston_watkins"), ref, rtol=1e-12)


@pytest.mark.parametrize("m", [0.0, 1.0, 3.0])
def test_crammer_singer_matches_a_brute_force_loop(m):
    z, y = logits_and_labels()
    ref = []
    for i in range(z.shape[0]):
        others = [float(z[i, j]) for j in range(z.shape[1]) if j != int(y[i])]
        ref.append(max(0.0, m - (float(z[i, y[i]]) - max(others))))
    assert multiclass_hinge(z, y, m, "crammer_singer").tolist() == pytest.approx(ref, rel=1e-12)
    assert any(r > 0 for r in ref)


def test_margin_term_is_the_batch_mean_on_clean_logits():
    torch.manual_seed(0)
    model = build_model("mlp", image_size=4, hidden=[8], num_classes=3)
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    obj = build_objective({"margin": {"margin": 1.5, "kind": "weston_watkins"}})
    total, _ = obj(StepContext(model, x, y, ThreatModel("linf", 0.1)))
    with torch.no_grad():
        ref = nn.MultiMarginLoss(margin=1.5)(model(x), y) * 3
    assert float(total.detach()) == pytest.approx(float(ref), rel=1e-6)


def linear_net(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", image_size=3, hidden=[], num_classes=4, mean=(0.2,), std=(0.5,)).double()


@pytest.mark.parametrize("radius", [None, 0.7])
def test_lipschitz_margin_on_a_linear_network_is_the_closed_form(radius):
    """Default: the L2 radius of the L-inf ball; ``radius``: the L2 radius the run is evaluated at."""
    model = linear_net()
    x = torch.rand(5, 1, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    eps = 0.05
    obj = build_objective({"lipschitz_margin": {"weight": 1.0, "radius": radius}})
    total, _ = obj(StepContext(model, x, y, ThreatModel("linf", eps)))
    W = model.layers[-1].weight.detach()
    L = float(torch.linalg.svdvals(W)[0]) / 0.5  # ||W||_2 / std
    r2 = eps * 3 if radius is None else radius  # L2 radius of the L-inf ball in d = 9: eps * sqrt(9)
    shift = math.sqrt(2) * L * r2
    with torch.no_grad():
        z = model(x)
    ref = F.cross_entropy(z + shift * (1 - F.one_hot(y, 4).double()), y)
    assert float(total.detach()) == pytest.approx(float(ref), rel=1e-9)
    assert float(ref) > float(F.cross_entropy(z, y)) + 0.05
    assert L == pytest.approx(lipschitz_upper_bound(model), rel=1e-9)


def test_lipschitz_margin_gradient_reaches_the_bound_and_matches_finite_differences():
    model = linear_net(1)
    x = torch.rand(5, 1, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    ctx = lambda: StepContext(model, x, y, ThreatModel("l2", 0.3))  # noqa: E731
    term = LipschitzMargin()
    W = model.layers[-1].weight
    (grad,) = torch.autograd.grad(term(_run(ctx())), W)
    detached = LipschitzMargin(detach_bound=True)
    (grad_detached,) = torch.autograd.grad(detached(_run(ctx())), W)
    assert (grad - grad_detached).abs().max() > 1e-3  # the bound itself is penalized
    h = 1e-6
    for i, j in [(0, 0), (1, 4), (3, 8), (2, 2)]:
        with torch.no_grad():
            W[i, j] += h
            up = float(term(_run(ctx())))
            W[i, j] -= 2 * h
            dn = float(term(_run(ctx())))
            W[i, j] += h
        assert (up - dn) / (2 * h) == pytest.approx(float(grad[i, j]), rel=1e-5, abs=1e-8)


def _run(ctx):
    ctx.run_views(("clean",), False)
    return ctx


def test_lipschitz_margin_bound_matches_the_bounds_module_on_a_cnn():
    torch.manual_seed(0)
    model = build_model("smallcnn", image_size=8, width=16, num_classes=3)
    x = torch.rand(2, 1, 8, 8)
    L_term = float(LipschitzMargin().lipschitz(model, x).detach())
    assert L_term == pytest.approx(lipschitz_upper_bound(model), rel=1e-6)
    # and it is an upper bound: ||f(x) - f(x')|| <= L ||x - x'|| on random pairs
    with torch.no_grad():
        a, b = torch.rand(64, 1, 8, 8), torch.rand(64, 1, 8, 8)
        ratio = (model(a) - model(b)).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= L_term
