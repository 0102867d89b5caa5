"""The objective machinery and the paper's regularizers (hamming, stability, dense Laplacian), the
weight-decay term, option validation, and one real training step with every registered term.

References: brute-force Hamming distances of activation patterns, direct per-example loops, a slow
double loop over pairs for the dense Laplacian, and torch.optim.SGD's own weight_decay."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustlib.models import build_model
from robustlib.regularizers import (
    TERMS,
    Ramp,
    StepContext,
    Term,
    build_objective,
    dense_laplacian,
    hamming,
    heat_kernel,
    stability,
)
from robustlib.threat import ThreatModel
from robustlib.training.loop import TrainConfig, train


def tiny_mlp(seed: int = 0, hidden=(12, 10), image_size: int = 4):
    torch.manual_seed(seed)
    return build_model("mlp", image_size=image_size, hidden=list(hidden), num_classes=4)


def batch(b: int = 6, image_size: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, image_size, image_size, generator=g) * 0.8 + 0.1
    y = torch.randint(0, 4, (b,), generator=g)
    return x, y


# ---------------------------------------------------------------------------------------------
# hamming
# ---------------------------------------------------------------------------------------------
def brute_force_hamming(z_plus, z_minus) -> float:
    """Mean over examples and layers of (fraction of units whose ReLU state differs)^2, by loops."""
    total, count = 0.0, 0
    for i in range(z_plus[0].shape[0]):
        for zp, zm in zip(z_plus, z_minus, strict=True):
            a, b = zp[i].flatten().tolist(), zm[i].flatten().tolist()
            differ = sum(1 for u, v in zip(a, b, strict=True) if (u > 0) != (v > 0))
            total += (differ / len(a)) ** 2
            count += 1
    return total / count


def test_hamming_large_alpha_is_the_hamming_distance_of_activation_patterns():
    model = tiny_mlp()
    x, _ = batch(8)
    rho = ThreatModel("linf", 0.3).random_corner(x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, zp = model((x + rho).clamp(0, 1), return_preacts=True)
        _, zm = model((x - rho).clamp(0, 1), return_preacts=True)
    assert min(float(z.abs().min()) for z in zp + zm) > 1e-4  # no unit sits on its kink
    expected = brute_force_hamming(zp, zm)
    assert expected > 0.01  # the patterns do differ: the check is not 0 == 0
    for alpha in (1e7, 1e9):
        assert float(hamming(zp, zm, alpha)) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # small alpha is a strictly smaller relaxation
    assert float(hamming(zp, zm, 1.0)) < expected


def test_hamming_finite_alpha_matches_the_per_unit_formula():
    g = torch.Generator().manual_seed(3)
    zp = [torch.randn(5, 7, generator=g), torch.randn(5, 2, 3, generator=g)]
    zm = [torch.randn(5, 7, generator=g), torch.randn(5, 2, 3, generator=g)]
    alpha = 2.5
    ref = []
    for i in range(5):
        for a, b in zip(zp, zm, strict=True):
            h = [0.5 * abs(math.tanh(alpha * u) - math.tanh(alpha * v))
                 for u, v in zip(a[i].flatten().tolist(), b[i].flatten().tolist(), strict=True)]
            ref.append((sum(h) / len(h)) ** 2)
    assert float(hamming(zp, zm, alpha)) == pytest.approx(np.mean(ref), rel=1e-5)


def test_hamming_rejects_bad_input():
    z = [torch.zeros(2, 3)]
    with pytest.raises(ValueError, match="alpha"):
        hamming(z, z, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        hamming(z, z + z, 1.0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_stability_matches_a_direct_computation(reduction):
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    per = [sum((u - v) ** 2 for u, v in zip(a[i].tolist(), b[i].tolist(), strict=True)) for i in range(6)]
    ref = sum(per) if reduction == "sum" else np.mean(per)
    assert float(stability(a, b, reduction)) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("output,reduction", [(None, None), ("logits", "mean"), ("softmax", "sum"),
                                              ("softmax", "mean")])
def test_stability_term_reads_the_paired_views(output, reduction):
    """Default: the literal eq. 16 -- logits (eq. 4), summed over the batch; the other readings as options."""
    model = tiny_mlp()
    x, y = batch()
    opts = {k: v for k, v in (("output", output), ("reduction", reduction)) if v is not None}
    obj = build_objective({"stability": {"weight": 1.0, **opts}})
    ctx = StepContext(model, x, y, ThreatModel("linf", 0.2), generator=torch.Generator().manual_seed(0))
    value = obj(ctx)[0].detach()
    with torch.no_grad():
        p, m = model(ctx.inputs["plus"]), model(ctx.inputs["minus"])
    if output == "softmax":
        p, m = F.softmax(p, 1), F.softmax(m, 1)
    per = [float(((p[i] - m[i]) ** 2).sum()) for i in range(len(y))]
    ref = np.mean(per) if reduction == "mean" else sum(per)
    assert float(value) == pytest.approx(ref, rel=1e-5)
    assert ThreatModel("linf", 0.2).contains(ctx.inputs["plus"], x).all()
    assert torch.allclose((ctx.inputs["plus"] - x).abs()[(x > 0.2) & (x < 0.8)], torch.tensor(0.2))


# ---------------------------------------------------------------------------------------------
# dense Laplacian
# ---------------------------------------------------------------------------------------------
def slow_dense_laplacian(points, outs, preacts, alpha, s, gamma_s, gamma_h, n_examples, reduction):
    """Eqs. 12-14 by a double loop over unordered pairs (float64): W_ij (gamma_S |f_i - f_j|^2 / r +
    gamma_H L_H(i, j) / B), L_H(i, j) the mean over layers of (mean over units of 1/2 |tanh - tanh|)^2."""
    n = points.shape[0]
    r = 1.0 if reduction == "sum" else n_examples
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            w = torch.exp(-((points[i] - points[j]) ** 2).sum() / s)
            ls = ((outs[i] - outs[j]) ** 2).sum()
            lh = sum((0.5 * (torch.tanh(alpha * z[i]) - torch.tanh(alpha * z[j])).abs()).mean() ** 2
                     for z in preacts) / len(preacts)
            total = total + w * (gamma_s * ls / r + gamma_h * lh / n_examples)
    return total


@pytest.mark.parametrize("bandwidth,gamma_s,gamma_h,output,reduction",
                         [(None, 0.8, 2400.0, "logits", "sum"), (3.0, 0.5, 2.0, "softmax", "mean"),
                          (0.05, 1.0, 0.0, "logits", "mean")])
def test_dense_laplacian_matches_a_slow_double_loop_value_and_gradient(bandwidth, gamma_s, gamma_h, output,
                                                                       reduction):
    model = tiny_mlp().double()
    x, y = batch(5)
    x = x.double()
    alpha = 3.0
    obj = build_objective({"dense_laplacian": {"bandwidth": bandwidth, "alpha": alpha, "gamma_s": gamma_s,
                                               "gamma_h": gamma_h, "output": output, "reduction": reduction}})
    ctx = StepContext(model, x, y, ThreatModel("linf", 0.1), generator=torch.Generator().manual_seed(0))
    value, _ = obj(ctx)
    grads = torch.autograd.grad(value, list(model.parameters()))

    points = torch.cat([ctx.inputs["plus"], ctx.inputs["minus"]]).flatten(1)
    paired = ((ctx.inputs["plus"] - ctx.inputs["minus"]) ** 2).sum((1, 2, 3)).mean()
    s = bandwidth if bandwidth is not None else float(paired)
    logits, pre = model(points.view(-1, 1, 4, 4), return_preacts=True)
    outs = F.softmax(logits, 1) if output == "softmax" else logits
    ref = slow_dense_laplacian(points, outs, [z.flatten(1) for z in pre], alpha, s, gamma_s, gamma_h, 5,
                               reduction)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-9, abs=1e-15)
    assert float(ref.detach()) > 0
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-12)


def test_dense_laplacian_float32_agrees_with_float64_when_views_nearly_agree():
    # the expanded Laplacian form cancels when f_i ~ f_j; the float64 accumulation must keep it accurate
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(6, 10, generator=g)
    out = torch.rand(6, 50, generator=g)
    out[3:] = out[:3] + 1e-4 * torch.randn(3, 50, generator=g)
    pts[3:] = pts[:3] + 0.01
    z = [torch.randn(6, 7, generator=g)]
    v32 = float(dense_laplacian(heat_kernel(pts, 0.5), out, z, 2.0, 1.0, 0.0, 3))
    p64, o64 = pts.double(), out.double()
    ref = sum(float(torch.exp(-((p64[i] - p64[j]) ** 2).sum() / 0.5) * ((o64[i] - o64[j]) ** 2).sum())
              for i in range(6) for j in range(i + 1, 6))
    assert v32 == pytest.approx(ref, rel=1e-4)
    assert heat_kernel(pts, 0.5).diagonal().eq(1).all()
    with pytest.raises(ValueError, match="bandwidth"):
        heat_kernel(pts, 0.0)


# ---------------------------------------------------------------------------------------------
# The objective: one forward pass, weights, ramps, validation
# ---------------------------------------------------------------------------------------------
def count_forwards(model):
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    return calls


def test_views_share_one_forward_pass():
    model = tiny_mlp()
    x, y = batch(6)
    calls = count_forwards(model)
    obj = build_objective({"ce": 1.0, "hamming": 10.0, "stability": 1.0, "dense_laplacian": 1.0})
    obj(StepContext(model, x, y, ThreatModel("linf", 0.1), generator=torch.Generator().manual_seed(0)))
    assert calls == [18]  # clean + plus + minus, once
    calls.clear()
    obj = build_objective({"ce": 1.0, "trades": {"weight": 6.0, "steps": 3}, "pgd_at": {"steps": 2}})
    obj(StepContext(model, x, y, ThreatModel("linf", 0.1), generator=torch.Generator().manual_seed(0)))
    # trades: 1 target pass + 3 steps; pgd_at: 2 steps; then ONE pass over clean + 2 adversarial views
    assert calls == [6, 6, 6, 6, 6, 6, 18]


def test_objective_is_the_weighted_sum_with_ramps():
    model = tiny_mlp()
    x, y = batch(6)
    obj = build_objective({"ce": 2.0, "stability": 3.0, "hamming": {"weight": 5.0, "ramp": False}},
                          ramp={"start": 0.2, "end": 0.8, "factor": 10.0})
    ctx = StepContext(model, x, y, ThreatModel("linf", 0.1), progress=0.5,
                      generator=torch.Generator().manual_seed(0))
    total, parts = obj(ctx)
    r = Ramp(0.2, 0.8, 10.0)(0.5)
    assert r == pytest.approx(5.5)
    expected = 2.0 * parts["ce"] + 3.0 * r * parts["stability"] + 5.0 * parts["hamming"]
    assert float(total.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(float(F.cross_entropy(model(x), y).detach()), rel=1e-6)
    # only the paper's regularizers follow the gamma ramp by default; "ramp: true" opts a baseline in
    assert {n for n, c in TERMS.items() if c.ramp_by_default} == {"hamming", "stability", "dense_laplacian"}
    obj = build_objective({"ce": 1.0, "ibp": {"weight": 0.1, "ramp": True}, "trades": 6.0},
                          ramp={"start": 0.2, "end": 0.8, "factor": 10.0})
    assert obj.terms["ibp"].weight_at(1.0) == pytest.approx(1.0)
    assert obj.terms["trades"].weight_at(1.0) == 6.0 and obj.terms["ce"].weight_at(1.0) == 1.0


@pytest.mark.parametrize("spec,match", [
    ({"nope": 1.0}, "unknown objective term 'nope'"),
    ({"trades": {"weight": 1.0, "stepz": 3}}, r"unknown options \['stepz'\]"),
    ({"ce": {"weight": 1.0, "alpha": 3}}, r"unknown options \['alpha'\]"),
    ({"hamming": -1.0}, "weight must be >= 0"),
    ({"hamming": float("nan")}, "weight must be >= 0"),
    ({"hamming": "heavy"}, "weight must be a number"),
    ({"hamming": {"alpha": 0}}, "alpha must be > 0"),
    ({"trades": {"steps": 0}}, "steps must be an integer >= 1"),
    ({"pgd_at": {"restarts": 0}}, "restarts"),
    ({"pgd_at": {"step_size": -1}}, "step_size"),
    ({"gradient_penalty": {"of": "weights"}}, "unknown of='weights'"),
    ({"jacobian": {"n_proj": 0}}, "n_proj"),
    ({"curvature": {"h": -1}}, "h must be >= 0"),
    ({"margin": {"kind": "hinge"}}, "unknown kind"),
    ({"margin": {"margin": -1}}, "margin must be >= 0"),
    ({"arr": {"distance": "l1"}}, "unknown distance"),
    ({"rs_loss": {"reduction": "max"}}, "unknown reduction"),
    ({"dense_laplacian": {"bandwidth": 0}}, "bandwidth must be > 0"),
    ({"fgsm_at": {"step_factor": 0}}, "step_factor"),
    ({"lipschitz_margin": {"iters": 0}}, "unknown options"),
    ({}, "at least one term"),
])
def test_bad_objective_specs_raise_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        build_objective(spec)


def test_register_term_rejects_duplicates_and_empty_names():
    class Dup(Term):
        name = "ce"

    class Nameless(Term):
        pass

    from robustlib.regularizers import register_term

    for cls in (Dup, Nameless):
        with pytest.raises(ValueError, match="empty or already registered"):
            register_term(cls)


def test_add_view_validates():
    model = tiny_mlp()
    x, y = batch(4)
    ctx = StepContext(model, x, y, ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="already exists"):
        ctx.add_view("plus", x)
    with pytest.raises(ValueError, match="shape"):
        ctx.add_view("adv", x[:2])


# ---------------------------------------------------------------------------------------------
# weight decay
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_weight_decay_term_gives_the_same_update_as_sgd_weight_decay(momentum):
    x, y = batch(8)
    lam = 0.05
    runs = {}
    for mode in ("optimizer", "term"):
        model = tiny_mlp(seed=5)
        spec = {"ce": 1.0} if mode == "optimizer" else {"ce": 1.0, "weight_decay": lam}
        obj = build_objective(spec)
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=momentum,
                              weight_decay=lam if mode == "optimizer" else 0.0)
        for _ in range(4):
            loss, _ = obj(StepContext(model, x, y, ThreatModel("linf", 0.1)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs[mode] = [p.detach().clone() for p in model.parameters()]
    init = list(tiny_mlp(seed=5).parameters())
    moved = sum(float((a - b).abs().sum().detach()) for a, b in zip(runs["term"], init, strict=True))
    assert moved > 0.1
    for a, b in zip(runs["optimizer"], runs["term"], strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_weight_decay_value_and_bias_option():
    model = tiny_mlp()
    x, y = batch(2)
    ctx = StepContext(model, x, y, ThreatModel("linf", 0.1))
    all_sq = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    w_sq = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters() if p.dim() > 1)
    assert float(TERMS["weight_decay"]()(ctx).detach()) == pytest.approx(0.5 * all_sq, rel=1e-5)
    assert float(TERMS["weight_decay"](biases=False)(ctx).detach()) == pytest.approx(0.5 * w_sq, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Every registered term in a real training step
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TERMS))
def test_every_term_trains_one_epoch_with_a_finite_loss(name):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    spec = {name: 1.0} if name == "ce" else {"ce": 1.0, name: 0.5}
    if name in ("trades", "pgd_at", "arr"):
        spec[name] = {"weight": 0.5, "steps": 2}
    cfg = TrainConfig(model="mlp", model_kwargs={"image_size": 8, "hidden": [16, 16], "num_classes": 3},
                      objective=spec, epochs=1, batch_size=32, lr=0.05, eps=0.1, eps_ramp=None, seed=0)
    torch.manual_seed(cfg.seed)
    before = [p.detach().clone() for p in build_model(cfg.model, **cfg.model_kwargs).parameters()]
    result = train(cfg, x, y, x[:0], y[:0], progress=False)
    row = result.history[-1]
    assert math.isfinite(row["train_loss"])
    assert math.isfinite(row[f"train_{name}"])
    after = list(result.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_dense_laplacian_on_the_paired_edges_is_the_sparse_objective(reduction):
    """Eq. 14 restricted to the edges (x_i + rho_i, x_i - rho_i) with unit weights equals
    gamma_S * stability + gamma_H * hamming (eqs. 16-17), value and gradient, the sparse terms computed by
    their own code paths (the fused Hamming autograd function, the stability sum)."""
    model = tiny_mlp().double()
    b = 5
    x, _ = batch(b)
    g = torch.Generator().manual_seed(0)
    rho = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1) * 0.1
    plus, minus = (x + rho).double(), (x - rho).double()
    gamma_s, gamma_h, alpha = 0.8, 2400.0, 3.0
    out, pre = model(torch.cat([plus, minus]), return_preacts=True)
    paired = torch.zeros(2 * b, 2 * b, dtype=torch.float64)
    idx = torch.arange(b)
    paired[idx, idx + b] = paired[idx + b, idx] = 1.0
    dense = dense_laplacian(paired, out, pre, alpha, gamma_s, gamma_h, b, reduction)
    sparse = gamma_s * stability(out[:b], out[b:], reduction) + gamma_h * hamming(
        [z[:b] for z in pre], [z[b:] for z in pre], alpha)
    assert float(dense) == pytest.approx(float(sparse), rel=1e-10)
    assert float(sparse) > 0
    params = list(model.parameters())
    for u, v in zip(torch.autograd.grad(dense, params, retain_graph=True), torch.autograd.grad(sparse, params),
                    strict=True):
        assert torch.allclose(u, v, rtol=1e-8, atol=1e-12)


def test_hamming_fused_backward_matches_plain_autograd():
    """The hand-written backward of ``hamming`` against autograd through the plain formula."""
    from robustlib.regularizers import hamming

    torch.manual_seed(0)
    zs = [torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    zm = [torch.randn(6, 5, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    pairs = [(zs[0], zs[1]), (zm[0], zm[1])]
    alpha = 3.0

    def plain():
        per = [(0.5 * (torch.tanh(alpha * a) - torch.tanh(alpha * b))).abs().flatten(1).mean(1) ** 2 for a, b in pairs]
        return torch.stack(per, 1).mean()

    fused = hamming([a for a, _ in pairs], [b for _, b in pairs], alpha)
    ref = plain()
    assert torch.allclose(fused, ref, rtol=1e-10)
    leaves = [*zs, *zm]
    g_fused = torch.autograd.grad(fused, leaves)
    g_ref = torch.autograd.grad(ref, leaves)
    for a, b in zip(g_fused, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: hamming([t[0], t[2]], [t[1], t[3]], alpha), tuple(leaves))


def test_compiled_hamming_matches_the_eager_paths(monkeypatch):
    """The torch.compile path of ``hamming`` (used in training) against plain autograd, value and
    gradients; a second shape falls back to the hand-written autograd function."""
    from robustlib.regularizers import manifold

    monkeypatch.setenv("ROBUSTLIB_COMPILE", "1")
    monkeypatch.setitem(manifold._COMPILED, "signature", None)
    monkeypatch.setitem(manifold._COMPILED, "fn", None)
    monkeypatch.setitem(manifold._COMPILED, "failed", False)
    torch.manual_seed(0)
    zp = [torch.randn(5, 3, 4, 4, requires_grad=True), torch.randn(5, 7, requires_grad=True)]
    zm = [torch.randn(5, 3, 4, 4, requires_grad=True), torch.randn(5, 7, requires_grad=True)]
    fast = hamming(zp, zm, 8.0)
    assert manifold._COMPILED["fn"] is not None or manifold._COMPILED["failed"]
    ref = manifold.hamming_reference(zp, zm, 8.0)
    tanh_form = torch.stack([(0.5 * (torch.tanh(8 * a) - torch.tanh(8 * b))).abs().flatten(1).mean(1)
                             for a, b in zip(zp, zm, strict=True)], 1).pow(2).mean()
    assert torch.allclose(fast, tanh_form, rtol=1e-5)
    leaves = [*zp, *zm]
    for a, b in zip(torch.autograd.grad(fast, leaves), torch.autograd.grad(ref, leaves), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)
    other = [z[:3].detach().requires_grad_(True) for z in zp], [z[:3].detach() for z in zm]
    assert manifold._compiled_for(*other, 8.0) is None  # another shape: the eager autograd function
    assert torch.allclose(hamming(*other, 8.0), manifold.hamming_reference(*other, 8.0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# the readings of eq. 17 (issue 24)
# ---------------------------------------------------------------------------------------------
def _hand_made():
    """Two layers of hand-made pre-activations (N = 2): layer 0 has m = 4 units, layer 1 (conv-shaped) m = 2."""
    zp = [torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 1.0, 2.0, -0.25]], dtype=torch.float64),
          torch.tensor([[[[0.3]], [[-0.7]]], [[[1.5]], [[0.2]]]], dtype=torch.float64)]
    zm = [torch.tensor([[-1.0, -2.0, 0.25, 3.0], [1.0, -1.0, 2.0, 0.5]], dtype=torch.float64),
          torch.tensor([[[[0.3]], [[0.4]]], [[[-1.5]], [[0.1]]]], dtype=torch.float64)]
    return zp, zm


def _closed_form(zp, zm, alpha: float, reading: str) -> float:
    """Each reading's formula (manifold.READINGS), by loops over examples, layers and units."""
    total, count = 0.0, 0
    for i in range(zp[0].shape[0]):
        for a, b in zip(zp, zm, strict=True):
            h = [0.5 * abs(math.tanh(alpha * u) - math.tanh(alpha * v))
                 for u, v in zip(a[i].flatten().tolist(), b[i].flatten().tolist(), strict=True)]
            m = len(h)
            d = {"mean_sq": (sum(h) / m) ** 2, "sum_sq_over_m": sum(h) ** 2 / m,
                 "mean_of_sq": sum(x * x for x in h) / m, "sum_of_sq_over_m2": sum(x * x for x in h) / m ** 2,
                 "mean": sum(h) / m}[reading]
            total += d
            count += 1
    return total / count


@pytest.mark.parametrize("reading", ["mean_sq", "sum_sq_over_m", "mean_of_sq", "sum_of_sq_over_m2", "mean"])
def test_every_reading_of_eq17_matches_its_closed_form(reading):
    from robustlib.regularizers.manifold import READINGS, hamming_reading

    assert reading in READINGS
    zp, zm = _hand_made()
    for alpha in (0.7, 8.0):
        got = float(hamming_reading(zp, zm, alpha, reading))
        assert got == pytest.approx(_closed_form(zp, zm, alpha, reading), rel=1e-12)


def test_readings_in_the_hamming_limit_are_exact_counts():
    """alpha -> inf: H is 1 where the ReLU state differs, else 0. Layer 0 of the hand-made batch differs in units
    0 (example 0) and 0, 1, 3 (example 1); layer 1 in unit 1 (example 0) and unit 0 (example 1)."""
    from robustlib.regularizers.manifold import hamming_reading

    zp, zm = _hand_made()
    counts = [(1, 4), (1, 2), (3, 4), (1, 2)]  # (units differing, m) for (ex 0, layer 0), (ex 0, layer 1), ...
    want = {"mean_sq": np.mean([(k / m) ** 2 for k, m in counts]),
            "sum_sq_over_m": np.mean([k * k / m for k, m in counts]),
            "mean_of_sq": np.mean([k / m for k, m in counts]),
            "sum_of_sq_over_m2": np.mean([k / m ** 2 for k, m in counts]),
            "mean": np.mean([k / m for k, m in counts])}
    for reading, value in want.items():
        assert float(hamming_reading(zp, zm, 1e9, reading)) == pytest.approx(value, rel=1e-9)


def test_default_reading_is_the_committed_hamming_bitwise():
    """The default reading is ``hamming`` itself (the committed runs' path): equal bits, and the slow reference."""
    from robustlib.regularizers.manifold import DEFAULT_READING, hamming_reading, hamming_reference

    g = torch.Generator().manual_seed(7)
    zp = [torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 9, generator=g)]
    zm = [torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 9, generator=g)]
    assert DEFAULT_READING == "mean_sq"
    assert torch.equal(hamming_reading(zp, zm, 8.0), hamming(zp, zm, 8.0))
    assert torch.allclose(hamming_reading(zp, zm, 8.0, "mean_sq"), hamming_reference(zp, zm, 8.0), rtol=1e-6)
    # through the term: a spec without `reading` and one naming the default give the same objective
    model = tiny_mlp()
    x, y = batch(6)
    values = []
    for spec in ({"hamming": {"weight": 3.0, "alpha": 8.0}}, {"hamming": {"weight": 3.0, "reading": "mean_sq"}}):
        ctx = StepContext(model, x, y, ThreatModel("linf", 0.2), 0.0, torch.Generator().manual_seed(0))
        values.append(build_objective(spec, ramp=None)(ctx)[0])
    assert torch.equal(values[0], values[1])


@pytest.mark.parametrize("reading", ["sum_sq_over_m", "mean_of_sq", "sum_of_sq_over_m2", "mean"])
def test_other_readings_have_correct_gradients(reading):
    from robustlib.regularizers.manifold import hamming_reading

    zp, zm = _hand_made()
    leaves = [z.clone().requires_grad_(True) for z in (*zp, *zm)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: hamming_reading([a, b], [c, d], 1.3, reading), tuple(leaves))


def test_reading_is_a_term_option_and_shows_in_the_objective_description():
    from robustlib.reporting.tables import describe_objective

    with pytest.raises(ValueError, match="unknown reading 'squared'"):
        build_objective({"hamming": {"weight": 1.0, "reading": "squared"}})
    obj = build_objective({"hamming": {"weight": 1.0, "reading": "mean_of_sq"}})
    assert obj.terms["hamming"].term.reading == "mean_of_sq"
    assert "reading mean_of_sq" in describe_objective({"hamming": {"weight": 9000.0, "reading": "mean_of_sq"}})
    assert "reading" not in describe_objective({"hamming": {"weight": 9000.0, "alpha": 8.0}})
