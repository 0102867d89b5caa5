"""Soundness and tightness of robustlib.bounds (intervals, tolerance, lipschitz) against independent
references: random and PGD-extremized points of the ball (robustlib.attacks.ascent.ascend), box corners
(exact range of an affine map), explicit operator matrices built by probing, and closed forms."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from robustlib.attacks.ascent import ascend
from robustlib.bounds.intervals import (
    ibp_certified,
    input_box,
    interval_bounds,
    linear_bounds,
    margin_lower_bounds,
    to_sequential,
)
from robustlib.bounds.lipschitz import (
    layer_operator_norm,
    lipschitz_bound,
    lipschitz_certified_radius,
    lipschitz_upper_bound,
)
from robustlib.bounds.tolerance import float32_error_bound, margin_tolerance
from robustlib.models import Normalize, build_model
from robustlib.threat import ThreatModel

torch.set_num_threads(1)


def _nets():
    torch.manual_seed(0)
    mlp = build_model("mlp", image_size=4, hidden=(12, 10), num_classes=4, mean=(0.3,), std=(0.5,))
    cnn = build_model("smallcnn", image_size=8, width=12, num_classes=4, mean=(0.2,), std=(0.7,))
    pool = nn.Sequential(Normalize((0.5,), (0.4,)), nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 6), nn.ReLU(),
                         nn.Linear(6, 3))
    return {"mlp": (mlp, (1, 4, 4)), "smallcnn": (cnn, (1, 8, 8)), "pool": (pool, (1, 6, 6))}


def _forward_all(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Every ReLU input, then the logits (the reference the bounds must contain)."""
    outs, h = [], x
    for layer in net:
        if isinstance(layer, nn.ReLU):
            outs.append(h)
        h = layer(h)
    return outs + [h]


class _Neuron(nn.Module):
    """Maps x to (a_i, -a_i) of one chosen neuron per example (so ``ascend`` can push it up or down)."""

    def __init__(self, net: nn.Sequential, k: int, idx: torch.Tensor, sign: float) -> None:
        super().__init__()
        self.net, self.k, self.idx, self.sign = net, k, idx, sign

    def forward(self, x):
        a = _forward_all(self.net, x)[self.k].flatten(1)
        v = a.gather(1, self.idx[:, None]) * self.sign
        return torch.cat([v, -v], 1)


@pytest.mark.parametrize("name", ["mlp", "smallcnn", "pool"])
def test_bounds_contain_random_and_pgd_points(name):
    model, shape = _nets()[name]
    model = model.double().eval()
    net = to_sequential(model)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, *shape, generator=g, dtype=torch.float64)
    eps = 0.08
    lo, hi = input_box(x, eps)
    with torch.no_grad():
        ibp = interval_bounds(net, lo, hi)
        lin = linear_bounds(net, lo, hi)
    assert len(ibp) == len(lin) == sum(isinstance(m, nn.ReLU) for m in net) + 1
    threat = ThreatModel("linf", eps)
    for b in range(2):
        xb = x[b:b + 1]
        pgd = b == 0  # PGD-extremize every neuron of the first example only (cost)
        pts = lo[b] + (hi[b] - lo[b]) * torch.rand(10_000, *shape, generator=g, dtype=torch.float64)
        pts = torch.cat([pts, lo[b:b + 1], hi[b:b + 1]])
        with torch.no_grad():
            vals = _forward_all(net, pts)
        for k, v in enumerate(vals):
            n = v[0].numel()
            # PGD maximizing and minimizing every neuron of the layer, one batch row per neuron
            idx = torch.randperm(n, generator=g)[:48]
            extreme = []
            for sign in (1.0, -1.0) if pgd else ():
                x0 = xb.expand(len(idx), *shape)
                adv = ascend(_Neuron(net, k, idx, sign), x0, lambda out: out[:, 0], threat, steps=15,
                             generator=g)
                extreme.append(_Neuron(net, k, idx, 1.0)(adv)[:, 0].detach())
            for (l, u) in (ibp[k], lin[k]):
                l, u = l[b].flatten(), u[b].flatten()
                tol = 1e-9 * (1 + u.abs().max())
                assert bool((v.flatten(1) >= l - tol).all()) and bool((v.flatten(1) <= u + tol).all())
                l, u = l[idx], u[idx]
                for e in extreme:
                    assert bool((e >= l - tol).all()) and bool((e <= u + tol).all())
            # the linear bounds are never looser than the interval bounds
            assert bool((lin[k][0] >= ibp[k][0] - 1e-9).all()) and bool((lin[k][1] <= ibp[k][1] + 1e-9).all())
    # and strictly tighter somewhere after the first nonlinearity
    assert any(bool((lin[k][1] - lin[k][0] < ibp[k][1] - ibp[k][0] - 1e-6).any()) for k in range(1, len(ibp)))


def test_interval_bounds_match_preacts_and_are_exact_for_an_affine_map():
    model, shape = _nets()["smallcnn"]
    x = torch.rand(3, *shape)
    logits, pre = model(x, return_preacts=True)
    bounds = interval_bounds(to_sequential(model), x, x)  # eps = 0: both bounds are the point itself
    assert len(bounds) == len(pre) + 1
    for (l, u), z in zip(bounds, pre + [logits], strict=True):
        assert l.shape == z.shape
        torch.testing.assert_close(l, z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(u, z, atol=1e-5, rtol=1e-5)
    # one affine layer: IBP gives the exact range, attained at corners of the box
    torch.manual_seed(3)
    lin = nn.Linear(3, 4).double()
    lo, hi = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64), torch.tensor([[0.4, 0.2, 0.9]], dtype=torch.float64)
    (l, u), = interval_bounds(nn.Sequential(lin), lo, hi)
    corners = torch.tensor(list(itertools.product(*zip(lo[0].tolist(), hi[0].tolist(), strict=True))),
                           dtype=torch.float64)
    out = lin(corners).detach()
    torch.testing.assert_close(l[0].detach(), out.min(0).values)
    torch.testing.assert_close(u[0].detach(), out.max(0).values)


def test_interval_bounds_are_differentiable_wrt_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    lo = torch.rand(2, 3, dtype=torch.float64) * 0.5
    hi = lo + 0.3

    def width() -> torch.Tensor:
        l, u = interval_bounds(net, lo, hi)[-1]
        return (u - l).sum()

    w = net[0].weight
    (g,) = torch.autograd.grad(width(), w)
    h = 1e-6
    for i, j in [(0, 0), (2, 1), (4, 2)]:
        with torch.no_grad():
            w[i, j] += h
            up = float(width())
            w[i, j] -= 2 * h
            down = float(width())
            w[i, j] += h
        assert abs((up - down) / (2 * h) - float(g[i, j])) < 1e-5


def test_certificates_are_sound_and_folding_is_tighter():
    model, shape = _nets()["mlp"]
    model.eval()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(32, *shape, generator=g)
    y = model(x).argmax(1)
    net = to_sequential(model)
    for eps in (0.002, 0.01, 0.05):
        cert = ibp_certified(model, x, y, eps)
        lo, hi = input_box(x.double(), eps)
        with torch.no_grad():
            m, _ = margin_lower_bounds(net.double(), lo, hi, y, "interval")
            ml, _ = margin_lower_bounds(net, lo, hi, y, "linear")
            (l, u) = interval_bounds(net, lo, hi)[-1]
        naive = l.gather(1, y[:, None]) - u  # subtracting the logit intervals
        naive = naive.scatter(1, y[:, None], float("inf"))
        assert bool((m >= naive - 1e-9).all())
        assert bool((ml >= m - 1e-9).all())
        with torch.no_grad():
            tol = margin_tolerance(net, lo, hi, margin_lower_bounds(net, lo, hi, y, "interval")[1]).tol
        assert bool((tol > 1e-4).all())
        torch.testing.assert_close(cert, (m > tol[:, None]).all(1))  # the verifier's numerical tolerance
        # soundness: no sampled or PGD point of a certified example is misclassified
        idx = cert.nonzero().flatten()
        if len(idx):
            threat = ThreatModel("linf", eps)
            xc, yc = x[idx], y[idx]

            def loss(z, yc=yc):
                return z.scatter(1, yc[:, None], float("-inf")).amax(1) - z.gather(1, yc[:, None])[:, 0]

            adv = ascend(model.float(), xc, loss, threat, steps=20, generator=g)
            assert bool((model(adv).argmax(1) == yc).all())
    assert bool(ibp_certified(model, x, y, 0.0).all())
    model.float()


def _explicit_matrix(fn, in_shape) -> torch.Tensor:
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    return fn(eye).reshape(n, -1).T  # (n_out, n_in)


CONV_SHAPES = [dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
               dict(in_channels=1, out_channels=4, kernel_size=4, stride=2, padding=1),
               dict(in_channels=3, out_channels=2, kernel_size=2, stride=2),
               dict(in_channels=2, out_channels=2, kernel_size=(3, 2), padding=(1, 0))]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda d: f"k{d['kernel_size']}s{d.get('stride', 1)}")
def test_conv_l2_bound_is_the_circular_norm_and_bounds_the_explicit_matrix(shape, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(**shape).double()
    in_shape = (conv.in_channels, 6, 5)
    M = _explicit_matrix(lambda e: nn.functional.conv2d(e, conv.weight, None, conv.stride, conv.padding),
                         in_shape)
    exact = float(torch.linalg.matrix_norm(M.detach(), ord=2))
    bound = float(layer_operator_norm(conv, in_shape, "l2").detach())
    # closed form: the FFT value is the spectral norm of the explicit circular convolution on the padded grid
    ph, pw = conv.padding
    grid = (conv.in_channels, in_shape[1] + 2 * ph, in_shape[2] + 2 * pw)

    def circular(e):
        wrapped = torch.cat([e, e[..., : conv.kernel_size[0] - 1, :]], dim=2)
        wrapped = torch.cat([wrapped, wrapped[..., : conv.kernel_size[1] - 1]], dim=3)
        return nn.functional.conv2d(wrapped, conv.weight)

    circ = float(torch.linalg.matrix_norm(_explicit_matrix(circular, grid).detach(), ord=2))
    assert bound == pytest.approx(circ, rel=1e-9)
    # soundness: never below the padded (strided) convolution's own norm, and not far above it here
    assert exact <= bound * (1 + 1e-12)
    assert bound <= 2 * exact
    # L-inf: the induced norm (max absolute row sum) of the explicit matrix is exact with full windows
    inf_est = float(layer_operator_norm(conv, in_shape, "linf").detach())
    assert inf_est >= float(M.abs().sum(1).max().detach()) - 1e-9


def test_lipschitz_bound_dominates_empirical_ratios_and_matches_exact_for_linear():
    model, shape = _nets()["smallcnn"]
    model = model.double().eval()
    L = lipschitz_upper_bound(model, "l2")
    assert L == pytest.approx(float(lipschitz_bound(model, "l2").detach()))
    g = torch.Generator().manual_seed(2)
    x = torch.rand(500, *shape, generator=g, dtype=torch.float64)
    xp = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    with torch.no_grad():
        ratio = (model(x) - model(xp)).norm(dim=1) / (x - xp).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= L
    # an MLP's bound is exactly the product of the layers' spectral norms (and 1/std)
    mlp, mshape = _nets()["mlp"]
    net = to_sequential(mlp)
    expected = 1 / 0.5
    for layer in net:
        if isinstance(layer, nn.Linear):
            expected *= float(torch.linalg.svdvals(layer.weight.detach().double())[0])
    assert lipschitz_upper_bound(mlp, "l2") == pytest.approx(expected, rel=1e-5)
    expected_inf = 1 / 0.5
    for layer in net:
        if isinstance(layer, nn.Linear):
            expected_inf *= float(layer.weight.detach().abs().sum(1).max())
    assert lipschitz_upper_bound(mlp, "linf") == pytest.approx(expected_inf, rel=1e-5)
    # the bound is differentiable w.r.t. the weights
    (grad,) = torch.autograd.grad(lipschitz_bound(model, "l2"), model.layers[0].weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.float()


def test_lipschitz_certified_radius_closed_form_and_soundness():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 2, 0])
    r = lipschitz_certified_radius(logits, y, 2.0)
    torch.testing.assert_close(r, torch.tensor([2.0, 0.0, 0.0]) / (math.sqrt(2) * 2.0))
    model, shape = _nets()["mlp"]
    model.eval()
    L = lipschitz_upper_bound(model, "l2")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, *shape, generator=g)
    with torch.no_grad():
        z = model(x)
        yb = z.argmax(1)
        rad = lipschitz_certified_radius(z, yb, L)
        d = torch.randn(x.shape, generator=g)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * rad.view(-1, 1, 1, 1) * 0.999
        assert bool((model(x + d).argmax(1) == yb).all())
    with pytest.raises(ValueError, match="L must be"):
        lipschitz_certified_radius(logits, y, 0.0)


def test_bad_input_gives_clear_errors():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="eps"):
        input_box(x, -0.1)
    with pytest.raises(ValueError, match="norm"):
        input_box(x, 0.1, "l1")
    with pytest.raises(ValueError, match="not supported"):
        to_sequential(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Tanh(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="kernel == stride"):
        to_sequential(nn.Sequential(nn.MaxPool2d(3, stride=1)))
    with pytest.raises(ValueError, match="cannot verify"):
        to_sequential(build_model("preactresnet18"))
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match="lower > upper"):
        interval_bounds(net, x + 0.1, x)
    with pytest.raises(ValueError, match="same shape"):
        interval_bounds(net, x, x[:1])
    with pytest.raises(ValueError, match="labels"):
        margin_lower_bounds(net, x, x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz_upper_bound(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))


@pytest.mark.parametrize("name", ["mlp", "smallcnn", "pool", "smallcnn28", "cancelling"])
def test_float32_error_bound_holds_and_is_not_vacuous(name):
    """|float32 logits - exact logits| <= the bound at random and corner points of the box (float64
    evaluation of the same float32 weights is the exact reference, to ~1e-16), for the test nets, a
    full-size SmallCNN and a layer built to cancel large terms."""
    if name == "smallcnn28":
        torch.manual_seed(1)
        model, shape = build_model("smallcnn", image_size=28, num_classes=10), (1, 28, 28)
    elif name == "cancelling":
        torch.manual_seed(2)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
        with torch.no_grad():
            model[1].weight.mul_(1e3)
            model[1].bias.mul_(1e3)
        shape = (1, 8, 8)
    else:
        model, shape = _nets()[name]
    model.eval()
    net = to_sequential(model)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, *shape, generator=g)
    eps = 0.05
    lo, hi = input_box(x.double(), eps)
    with torch.no_grad():
        mag, err = float32_error_bound(net, lo, hi)
        _, act = margin_lower_bounds(net, lo, hi, net(x).argmax(1), "linear")
        mag2, err2 = float32_error_bound(net, lo, hi, act)
        exact = copy.deepcopy(net).double()
        worst = torch.zeros_like(err)
        for k in range(20):
            u = torch.rand(x.shape, generator=g, dtype=torch.float64)
            if k % 2:
                u = u.round()  # corners
            p = (lo + (hi - lo) * u).float()  # float32 points of the box
            p = torch.minimum(torch.maximum(p, lo.float()), hi.float())
            z32, z64 = net(p).double(), exact(p.double())
            assert bool((z64.abs() <= mag + 1e-9).all())
            worst = torch.maximum(worst, (z32 - z64).abs())
    assert bool((worst <= err2).all()) and bool((err2 <= err * (1 + 1e-9)).all()) and bool((mag2 <= mag).all())
    assert float(worst.max()) > 0  # float32 rounding is visible, and the bound covers it
    assert float(err.max()) < 1e-3 * float(mag.max())  # and is not vacuous
