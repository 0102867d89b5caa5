"""ibp, rs_loss and l1 against an independent NumPy interval propagation on a small MLP (and soundness
of the worst-case logits against sampled points of the ball); ibp's kappa schedule against Gowal et
al.'s formula; rs_loss's and l1's reductions against Xiao et al.'s code (MadryLab/relu_stable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustlib.models import build_model
from robustlib.regularizers import StepContext, build_objective
from robustlib.regularizers.certified import ibp_worst_logits
from robustlib.threat import ThreatModel

EPS = 0.05


def mlp(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", image_size=3, hidden=[10, 8], num_classes=4, mean=(0.3,), std=(0.4,)).double()


def data(seed=1, b=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 3, 3, generator=g, dtype=torch.float64)
    x[0, 0, 0, 0] = 0.0  # exercise the [0, 1] clip of the box
    return x, torch.randint(0, 4, (b,), generator=g)


def numpy_ibp(model, x, eps):
    """Centre/radius interval propagation written from scratch: returns the pre-ReLU (l, u) pairs, the
    last hidden post-ReLU box and the logit box."""
    lo = np.clip(x.reshape(x.shape[0], -1).numpy() - eps, 0, 1)
    hi = np.clip(x.reshape(x.shape[0], -1).numpy() + eps, 0, 1)
    mean, std = float(model.normalize.mean.flatten()[0]), float(model.normalize.std.flatten()[0])
    lo, hi = (lo - mean) / std, (hi - mean) / std
    linears = [m for m in model.layers if isinstance(m, torch.nn.Linear)]
    pre = []
    for k, lin in enumerate(linears):
        W, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
        if k == len(linears) - 1:
            hidden = (lo, hi)
        c, r = (lo + hi) / 2, (hi - lo) / 2
        c, r = c @ W.T + b, r @ np.abs(W).T
        lo, hi = c - r, c + r
        if k < len(linears) - 1:
            pre.append((lo, hi))
            lo, hi = np.maximum(lo, 0), np.maximum(hi, 0)
    return pre, hidden, (lo, hi), linears[-1]


def ce(z, y):
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def run(spec, model, x, y, eps=EPS, eps_fraction=1.0):
    obj = build_objective(spec)
    return obj(StepContext(model, x, y, ThreatModel("linf", eps), eps_fraction=eps_fraction))[1]


WORST_ONLY = {"kappa_start": 0.0, "kappa_end": 0.0}


def test_ibp_plain_worst_logits_match_numpy_interval_propagation():
    model, (x, y) = mlp(), data()
    _, _, (lo, hi), _ = numpy_ibp(model, x, EPS)
    worst = hi.copy()
    worst[np.arange(len(y)), y.numpy()] = lo[np.arange(len(y)), y.numpy()]
    value = run({"ibp": {"elide_last": False, **WORST_ONLY}}, model, x, y)["ibp"]
    assert float(value) == pytest.approx(ce(worst, y.numpy()), rel=1e-10)


def test_ibp_elided_worst_logits_match_numpy_and_are_tighter_and_sound():
    model, (x, y) = mlp(), data()
    _, (hl, hh), (lo, hi), last = numpy_ibp(model, x, EPS)
    W, b = last.weight.detach().numpy(), last.bias.detach().numpy()
    c, r = (hl + hh) / 2, (hh - hl) / 2
    worst = np.zeros_like(lo)
    for i, yi in enumerate(y.tolist()):
        for j in range(4):
            if j != yi:
                wd, bd = W[yi] - W[j], b[yi] - b[j]
                worst[i, j] = -(c[i] @ wd - r[i] @ np.abs(wd) + bd)  # -lower bound of z_y - z_j
    value = run({"ibp": {"elide_last": True, **WORST_ONLY}}, model, x, y)["ibp"]
    assert float(value) == pytest.approx(ce(worst, y.numpy()), rel=1e-10)
    # tighter than the plain form, in the same (shift-invariant) units z_j - z_y
    plain = hi - lo[np.arange(len(y)), y.numpy()][:, None]
    mask = np.ones_like(worst, dtype=bool)
    mask[np.arange(len(y)), y.numpy()] = False
    assert (worst[mask] <= plain[mask] + 1e-12).all() and (worst[mask] < plain[mask] - 1e-6).any()
    # sound: no sampled point of the ball beats the worst case
    ctx = StepContext(model, x, y, ThreatModel("linf", EPS))
    w = ibp_worst_logits(ctx, elide_last=True).detach()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pts = ThreatModel("linf", EPS).random_start(x, g)
        with torch.no_grad():
            z = model(pts)
        diff = z - z.gather(1, y[:, None])
        assert (diff <= w + 1e-9).all()


def test_ibp_at_eps_zero_is_the_clean_cross_entropy():
    model, (x, y) = mlp(), data()
    value = run({"ibp": 1.0}, model, x, y, eps=0.0)["ibp"]
    with torch.no_grad():
        assert float(value) == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-9)


@pytest.mark.parametrize("eps_fraction,kappa", [(0.0, 1.0), (0.5, 0.75), (1.0, 0.5), (2.0, 0.5)])
def test_ibp_mixes_clean_and_worst_case_with_gowals_kappa_schedule(eps_fraction, kappa):
    """Gowal et al. 2018: kappa CE(clean) + (1 - kappa) CE(worst), kappa 1 -> 0.5 linearly over the eps
    ramp (clamped after it)."""
    model, (x, y) = mlp(), data()
    _, _, (lo, hi), _ = numpy_ibp(model, x, EPS)
    worst = hi.copy()
    worst[np.arange(len(y)), y.numpy()] = lo[np.arange(len(y)), y.numpy()]
    with torch.no_grad():
        clean = ce(model(x).numpy(), y.numpy())
    value = run({"ibp": {"elide_last": False}}, model, x, y, eps_fraction=eps_fraction)["ibp"]
    assert float(value) == pytest.approx(kappa * clean + (1 - kappa) * ce(worst, y.numpy()), rel=1e-10)


def test_eps_ramp_fraction_drives_kappa_in_the_training_loop():
    from robustlib.training.schedules import EpsRamp

    ramp = EpsRamp(start=0.2, end=0.6, initial=0.0)
    assert [ramp.fraction(p) for p in (0.0, 0.2, 0.4, 0.6, 0.9)] == pytest.approx([0, 0, 0.5, 1, 1])
    assert ramp(0.1, 0.4) == pytest.approx(0.5 * 0.1)  # eps and kappa move together


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_rs_loss_matches_numpy_interval_bounds(reduction):
    model, (x, y) = mlp(), data()
    pre, _, _, _ = numpy_ibp(model, x, EPS)
    per_example = np.concatenate([-np.tanh(1 + lo * hi) for lo, hi in pre], 1)
    assert per_example.shape[1] == 18
    ref = (per_example.mean(1) if reduction == "mean" else per_example.sum(1)).mean()
    value = run({"rs_loss": {"reduction": reduction}}, model, x, y)["rs_loss"]
    assert float(value) == pytest.approx(float(ref), rel=1e-10)
    if reduction == "sum":  # the default, and Xiao et al.'s: sum_layers -mean_batch(sum_units tanh(1 + l u))
        xiao = sum(-np.mean(np.sum(np.tanh(1.0 + lo * hi), axis=-1)) for lo, hi in pre)
        assert float(run({"rs_loss": 1.0}, model, x, y)["rs_loss"]) == pytest.approx(float(xiao), rel=1e-10)
    # unstable ReLUs (l < 0 < u) are what the loss pushes on: they score above -tanh(1)
    unstable = np.concatenate([(lo < 0) & (hi > 0) for lo, hi in pre], 1)
    assert unstable.any() and (per_example[unstable] > -np.tanh(1)).all()


def test_bound_terms_are_differentiable_and_train_a_cnn_step():
    torch.manual_seed(0)
    model = build_model("smallcnn", image_size=8, width=16, num_classes=3)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    obj = build_objective({"ce": 1.0, "ibp": 0.5, "rs_loss": 0.1})
    total, parts = obj(StepContext(model, x, y, ThreatModel("linf", 0.05)))
    grads = torch.autograd.grad(total, list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert float(parts["ibp"]) >= float(parts["ce"])  # the worst case is never better than the clean case


def test_l1_is_xiaos_dense_matrix_l1_on_smallcnn():
    """Xiao et al.'s l1_loss for their MNIST CNN: 14 * 14 |W_conv1| + 7 * 7 |W_conv2| + |W_fc1| (no output
    layer, no biases); the same closed form on our SmallCNN (28 -> 14 -> 7)."""
    torch.manual_seed(0)
    model = build_model("smallcnn")
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    c1, c2, fc1 = model.layers[0], model.layers[2], model.layers[5]
    ref = 14 * 14 * c1.weight.abs().sum() + 7 * 7 * c2.weight.abs().sum() + fc1.weight.abs().sum()
    value = run({"l1": 1.0}, model, x, y)["l1"]
    assert float(value) == pytest.approx(float(ref), rel=1e-6)
    plain = run({"l1": {"conv_scaling": False, "output_layer": True}}, model, x, y)["l1"]
    everything = sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert float(plain) == pytest.approx(float(everything), rel=1e-6)
    # the gradient is the sign pattern, scaled per layer
    obj = build_objective({"l1": 1.0})
    total, _ = obj(StepContext(model, x, y, ThreatModel("linf", 0.1)))
    (g1,) = torch.autograd.grad(total, [c1.weight])
    assert torch.allclose(g1, 196 * c1.weight.sign())
