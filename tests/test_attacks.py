"""FGSM, PGD, transfer and AutoAttack against independent references: torchattacks' PGD iterates,
closed forms / brute force on linear models, recomputation of the best point from the trace, and
pyautoattack's checks made fatal on every batch."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlib.attacks.autoattack import autoattack
from robustlib.attacks.common import AttackCheckError, zero_jacobian
from robustlib.attacks.gradient import escape_pgd, fgsm, pgd, transfer
from robustlib.data.datasets import load_split
from robustlib.models import build_model
from robustlib.threat import ThreatModel

torch.set_num_threads(1)


def _train(seed: int, n: int = 800, epochs: int = 3) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data = load_split("mnist", train=True, root="data")
    x, y = data.images(torch.arange(n)), data.labels(torch.arange(n))
    torch.manual_seed(seed)
    model = build_model("smallcnn", mean=(0.1307,), std=(0.3081,), width=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, n, 50):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    return model.eval(), x, y


@pytest.fixture(scope="module")
def net():
    model, _, _ = _train(0)
    test = load_split("mnist", train=False, root="data")
    idx = torch.arange(64)
    return model, test.images(idx), test.labels(idx)


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_iterates_match_torchattacks(net, norm, eps):
    """Without random start, every iterate of an example still attacked equals torchattacks' iterate."""
    import torchattacks

    model, x, y = net
    x, y = x[:24], y[:24]
    steps, alpha = 6, eps / 3
    seen = {}

    def trace(r, t, idx, xa, loss):
        seen[t] = (idx.clone(), xa.clone())

    pgd(model, x, y, ThreatModel(norm, eps), steps=steps, step_size=alpha, random_start=False, trace=trace)
    assert len(seen) >= 3
    for t, (idx, xa) in seen.items():
        if t == 0:
            ref = x
        elif norm == "linf":
            ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=t, random_start=False)(x, y)
        else:
            ref = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=t, random_start=False)(x, y)
        # L-inf: sign steps make the iterates identical up to float error; L2 iterates drift by float
        # error only (torchattacks averages the loss over the whole batch, we sum over the active set)
        torch.testing.assert_close(xa, ref[idx], atol=2e-5 if norm == "linf" else 1e-3, rtol=0)


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin).eval()


def test_fgsm_linear_closed_form_and_brute_force():
    """Binary linear classifier: CE is increasing in (w_j - w_y).x, so the optimal L-inf perturbation is
    eps * sign(w_j - w_y), the best of the 4 cube corners; the optimal L2 one is eps * u/||u||."""
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        w, b = torch.randn(2, 2, generator=g), torch.randn(2, generator=g)
        model = _linear(w, b)
        x = 0.3 + 0.4 * torch.rand(1, 1, 1, 2, generator=g)
        y = torch.randint(0, 2, (1,), generator=g)
        eps = 0.2
        u = (w[1 - y] - w[y]).view(1, 1, 1, 2)
        corners = torch.tensor(list(itertools.product([-eps, eps], repeat=2))).view(4, 1, 1, 2)
        ce = F.cross_entropy(model(x + corners), y.expand(4), reduction="none")
        best = x + corners[ce.argmax()]
        adv = fgsm(model, x, y, ThreatModel("linf", eps)).points
        torch.testing.assert_close(adv, best)
        torch.testing.assert_close(adv, x + eps * u.sign())
        adv2 = fgsm(model, x, y, ThreatModel("l2", eps)).points
        torch.testing.assert_close(adv2, x + eps * u / u.norm())
        angles = torch.linspace(0, 2 * torch.pi, 3601)
        circle = eps * torch.stack([angles.cos(), angles.sin()], 1).view(-1, 1, 1, 2)
        ce2 = F.cross_entropy(model(x + circle), y.expand(len(angles)), reduction="none")
        assert float(F.cross_entropy(model(adv2), y).detach()) >= float(ce2.max().detach()) - 1e-4


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.8)])
def test_pgd_keeps_most_adversarial_point(net, norm, eps):
    """Reference: the full trace. A fooled example returns its first misclassified iterate and is never
    stepped again; an example never fooled returns its highest-loss iterate over steps and restarts;
    clean-misclassified examples are returned unchanged and never attacked."""
    model, x, y = net
    x, y = x[:32], y[:32]
    log = []

    def trace(r, t, idx, xa, loss):
        with torch.no_grad():
            log.append((r, t, idx.clone(), xa.clone(), loss.clone(), model(xa).argmax(1) != y[idx]))

    adv = pgd(model, x, y, ThreatModel(norm, eps), steps=6, restarts=3, generator=torch.Generator().manual_seed(0),
              trace=trace).points
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        adv_pred = model(adv).argmax(1)
    for i in range(len(y)):
        pts = [(xa[k], lo[k], bool(fo[k])) for r, t, idx, xa, lo, fo in log
               for k in (idx == i).nonzero().flatten().tolist()]
        if not clean_ok[i]:
            assert not pts and torch.equal(adv[i], x[i])
            continue
        fooled = [p[2] for p in pts]
        if any(fooled):
            first = fooled.index(True)
            assert first == len(pts) - 1, "example stepped after being fooled"
            assert torch.equal(adv[i], pts[first][0]) and adv_pred[i] != y[i]
        else:
            assert len(pts) == 3 * 7
            k = max(range(len(pts)), key=lambda j: float(pts[j][1]))
            assert torch.equal(adv[i], pts[k][0])
    # the active set shrinks: later restarts attack only survivors
    per_restart = [sum(len(idx) for r, t, idx, *_ in log if r == rr and t == 0) for rr in range(3)]
    assert per_restart[0] >= per_restart[1] >= per_restart[2]


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("linf", 0.3), ("l2", 0.5), ("l2", 3.0)])
def test_pgd_points_in_ball_box_finite(net, norm, eps):
    model, x, y = net
    x, y = x[:32], y[:32]
    adv = pgd(model, x, y, ThreatModel(norm, eps), steps=5, restarts=2, step_size=eps,
              generator=torch.Generator().manual_seed(0)).points
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()
    assert _acc(model, adv, y) < _acc(model, x, y)


def test_pgd_stronger_than_fgsm_and_eval_mode(net):
    model, x, y = net
    drop = nn.Sequential(model, nn.Dropout(0.5)).train()
    a = pgd(drop, x, y, ThreatModel("linf", 0.1), steps=10, restarts=2,
            generator=torch.Generator().manual_seed(0)).points
    b = pgd(drop, x, y, ThreatModel("linf", 0.1), steps=10, restarts=2,
            generator=torch.Generator().manual_seed(0)).points
    assert torch.equal(a, b) and drop.training and drop[1].training  # eval mode inside, restored after
    assert _acc(model, a, y) <= _acc(model, fgsm(model, x, y, ThreatModel("linf", 0.1)).points, y)
    assert _acc(model, pgd(model, x, y, ThreatModel("linf", 0.3), steps=20).points, y) == 0.0


def test_bad_input_raises(net):
    model, x, y = net
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, ThreatModel("linf", -0.1))
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, ThreatModel("l1", 0.1))
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, ThreatModel("linf", 0.1), steps=-1)
    with pytest.raises(ValueError, match="restarts"):
        pgd(model, x, y, ThreatModel("linf", 0.1), restarts=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, x * 2, y, ThreatModel("linf", 0.1))
    with pytest.raises(TypeError, match="ThreatModel"):
        pgd(model, x, y, 0.1)
    with pytest.raises(ValueError, match="version"):
        autoattack(model, x, y, ThreatModel("linf", 0.1), version="fast")


def test_transfer_black_box(net):
    """Crafted on a source net, the points lower a separately trained target's accuracy, less than
    white-box PGD on the target does."""
    target, x, y = net
    source, _, _ = _train(1, epochs=2)
    adv = transfer(source, target, x, y, ThreatModel("linf", 0.2), steps=10, restarts=1,
                   generator=torch.Generator().manual_seed(0)).points
    assert ((adv - x).abs().amax() <= 0.2 + 1e-6) and adv.min() >= 0 and adv.max() <= 1
    white = pgd(target, x, y, ThreatModel("linf", 0.2), steps=10, generator=torch.Generator().manual_seed(0)).points
    assert _acc(source, adv, y) < 0.2
    assert _acc(target, white, y) <= _acc(target, adv, y) < _acc(target, x, y)
    with pytest.raises(ValueError, match="classes"):
        transfer(nn.Sequential(nn.Flatten(), nn.Linear(784, 3)), target, x, y, ThreatModel("linf", 0.1))


# --- AutoAttack -------------------------------------------------------------------------------------
def test_autoattack_points(net):
    model, x, y = net
    x, y = x[:16], y[:16]
    adv = autoattack(model, x, y, ThreatModel("linf", 0.3), batch_size=8).points
    assert adv.shape == x.shape and torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().amax() <= 0.3 + 1e-6
    assert _acc(model, adv, y) == 0.0


class _Softmax(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).softmax(1)


class _NoisyOnMarked(nn.Module):
    """Random only on inputs whose first pixel is exactly 1 (placed in the second batch only)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m(x)
        marked = (x.flatten(1)[:, 0] == 1.0).float()[:, None]
        return out + marked * torch.randn_like(out)


class _Dynamic(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            g = torch.autograd.grad(self.m(xg).sum(), xg)[0]
        return self.m(x + 0 * g)


class _Quantized(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(torch.round(x * 4) / 4)


class _ConstantWhenBright(nn.Module):
    """Constant logits (favouring class ``c``) on bright images: zero Jacobian in a whole ball there."""

    def __init__(self, m, c):
        super().__init__()
        self.m, self.c = m, c

    def forward(self, x):
        out = self.m(x)
        const = torch.full_like(out, -5.0)
        const[:, self.c] = 5.0
        bright = (x.flatten(1).mean(1) > 0.6)[:, None]
        return torch.where(bright, const, out)


def test_zero_gradient_point_counted_robust_is_fatal(net):
    model, x, y = net
    x, y = x[:8].clone(), y[:8].clone()
    x[5], y[5] = 1.0, 3  # a bright image of class 3: constant, correct and gradient-free in its whole ball
    with pytest.raises(AttackCheckError) as err:
        autoattack(_ConstantWhenBright(model, 3), x, y, ThreatModel("linf", 0.3), batch_size=4)
    assert err.value.flag == "zero_gradients" and "positions [5]" in str(err.value)


def test_one_unresolved_zero_gradient_survivor_in_a_hundred_is_recorded_not_fatal():
    """A blind, correct bright image among 120 examples (0.8%, under the 1% tolerated): the run goes on,
    the example counts as unbroken, and ``info`` names it as unresolved (a small random MLP: fast)."""
    torch.manual_seed(0)
    model = build_model("mlp", image_size=6, hidden=(16,)).eval()
    x = torch.rand(120, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 0.5
    with torch.no_grad():
        y = model(x).argmax(1)
    x[5], y[5] = 1.0, 3
    wrapped = _ConstantWhenBright(model, 3)
    res = autoattack(wrapped, x, y, ThreatModel("linf", 0.3), batch_size=120, square_queries=100,
                     square_escalation=0)
    assert res.info["unresolved"] == 1 and res.info["unresolved_positions"] == "5"
    with torch.no_grad():
        assert wrapped(res.points[5:6]).argmax(1).item() == 3


def test_zero_gradient_points_not_counted_robust_do_not_fail(net):
    """The same gradient-free bright image, but of another class: it is misclassified, so no robustness
    claim rests on a blind gradient and the run goes on; ``zero_jacobian`` still sees it."""
    model, x, y = net
    x, y = x[:8].clone(), y[:8].clone()
    x[5], y[5] = 1.0, 4
    wrapped = _ConstantWhenBright(model, 3)
    x_adv = autoattack(wrapped, x, y, ThreatModel("linf", 0.3), batch_size=4).points
    assert x_adv.shape == x.shape
    assert zero_jacobian(wrapped, x).tolist() == [i == 5 for i in range(8)]


@pytest.mark.parametrize("wrapper,flag", [(_Softmax, "softmax_output"), (_NoisyOnMarked, "randomized"),
                                          (_Dynamic, "dynamic")])
def test_autoattack_checks_are_fatal(net, wrapper, flag):
    model, x, y = net
    x = x[:8].clone()
    x[6, 0, 0, 0] = 1.0  # second batch (batch_size=4) only: pyautoattack's own check sees batch 1 only
    with pytest.raises(AttackCheckError) as err:
        autoattack(wrapper(model), x, y[:8], ThreatModel("linf", 0.3), batch_size=4)
    assert err.value.flag == flag and f"[{flag}]" in str(err.value)


def test_square_stronger_flag_escalates_square_instead_of_failing(net):
    """A quantized model has no useful gradients: Square beats APGD/FAB (pyautoattack flags it). The
    run goes on, and every example Square can break is counted broken."""
    model, x, y = net
    q = _Quantized(model)
    res = autoattack(q, x[:8], y[:8], ThreatModel("linf", 0.3), batch_size=4)
    x_adv, record = res.points, res.info
    assert bool(ThreatModel("linf", 0.3).contains(x_adv, x[:8]).all())
    with torch.no_grad():
        assert not bool((q(x_adv).argmax(1) == y[:8]).any())
    assert record["square_stronger"] and 0 <= record["escalation_hits"] <= record["escalated"]
    # square_escalation=0: the flag is recorded, nothing is re-run
    record0 = autoattack(q, x[:8], y[:8], ThreatModel("linf", 0.3), batch_size=4, square_escalation=0).info
    assert record0 == {"square_stronger": True, "escalated": 0, "escalation_hits": 0, "blind_escape_hits": 0,
                       "unresolved": 0, "unresolved_positions": ""}


def test_square_escalation_keeps_only_hits(net):
    from robustlib.attacks.autoattack import _escalate_square

    model, x, y = net
    q = _Quantized(model)
    x0, y0 = x[:6].clone(), y[:6]
    survived = torch.ones(6, dtype=torch.bool)
    x_adv, left = _escalate_square(q, x0, y0, x0.clone(), survived.clone(), ThreatModel("linf", 0.3), 0, 4, 1, 5000)
    with torch.no_grad():
        wrong = q(x_adv).argmax(1) != y0
    assert torch.equal(left, ~wrong & survived)
    assert torch.equal(x_adv[left], x0[left])  # survivors keep their previous point


def test_square_escalation_rejects_negative_counts(net):
    model, x, y = net
    with pytest.raises(ValueError, match="square_escalation"):
        autoattack(model, x[:4], y[:4], ThreatModel("linf", 0.3), square_escalation=-1)
    with pytest.raises(ValueError, match="square_queries"):
        autoattack(model, x[:4], y[:4], ThreatModel("linf", 0.3), square_queries=0)


def test_square_runs_the_given_query_budget(net, monkeypatch):
    """``square_queries`` is the budget Square runs with, in AutoAttack and in the escalation re-run
    (``square_escalation`` times it)."""
    from pyautoattack.square import SquareAttack

    budgets = []
    perturb = SquareAttack.perturb

    def recording(self, *args, **kwargs):
        budgets.append(self.n_queries)
        return perturb(self, *args, **kwargs)

    monkeypatch.setattr(SquareAttack, "perturb", recording)
    model, x, y = net
    with contextlib.suppress(AttackCheckError):  # so small a budget may leave zero-gradient survivors
        autoattack(_Quantized(model), x[:8], y[:8], ThreatModel("linf", 0.3), batch_size=8, square_queries=30,
                   square_escalation=2)
    assert budgets[0] == 30 and budgets[1:] and set(budgets[1:]) == {60}  # AutoAttack's Square, then the re-run


def test_zero_gradient_survivors_proven_robust_by_bounds_do_not_fail():
    """A collapsed network (every first-layer ReLU dead, so the output is constant) is genuinely robust on
    the examples of its constant class: their zero Jacobian is no blind spot, since interval bounds prove
    them robust. ``autoattack`` accepts them (the wrapped, unboundable model above is still fatal)."""
    from robustlib.bounds.intervals import ibp_certified
    from robustlib.models import build_model

    torch.manual_seed(0)
    model = build_model("smallcnn", width=16)
    with torch.no_grad():
        model.layers[0].bias.fill_(-100.0)  # every first-layer pre-activation < 0 on [0, 1] images
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        c = int(model(x[:1]).argmax())
    y = torch.tensor([c, (c + 1) % 10] * 4)
    assert zero_jacobian(model, x).all() and ibp_certified(model, x[::2], y[::2], 0.3).all()
    x_adv = autoattack(model, x, y, ThreatModel("linf", 0.3), batch_size=4).points
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == y).tolist() == [True, False] * 4


def _dead_unit_net(x0: torch.Tensor, gaps: torch.Tensor, seed: int = 0) -> tuple[nn.Sequential, torch.Tensor]:
    """Per example k (input ``x0[k]``), a network in which one ReLU unit ``h = relu(w . x + b)`` is off at
    ``x0[k]`` by ``gaps[k]`` (``w . x0[k] + b = -gaps[k]``; one network per example: a separate unit per
    example, each read only from its own block of inputs) and class 1 wins once ``h > 0.1``: logits
    ``z_0 = 1``, ``z_1 = 10 h``, ``z_2..9 = -1``. At ``x0`` every unit is off: zero Jacobian, flat loss."""
    g = torch.Generator().manual_seed(seed)
    d = x0[0].numel()
    w = torch.randn(d, generator=g)
    lin = nn.Linear(d, 1)
    out = nn.Linear(1, 10)
    with torch.no_grad():
        lin.weight.copy_(w[None])
        lin.bias.zero_()
        out.weight.zero_()
        out.weight[1, 0] = 10.0
        out.bias.fill_(-1.0)
        out.bias[0], out.bias[1] = 1.0, 0.0
    return nn.Sequential(nn.Flatten(), lin, nn.ReLU(), out), w


def _reach(w: torch.Tensor, x0: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Closed form: ``max w . (x - x0)`` over the ball (the box [0, 1] inactive: checked)."""
    if threat.norm == "linf":
        assert float(x0.min()) >= threat.eps and float(x0.max()) <= 1 - threat.eps
        return threat.eps * w.abs().sum().expand(x0.shape[0])
    step = threat.eps * w / w.norm()
    assert float(step.abs().max()) <= min(float(x0.min()), 1 - float(x0.max()))
    return threat.eps * w.norm().expand(x0.shape[0])


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.1), ThreatModel("l2", 2.0)])
def test_escape_pgd_breaks_exactly_the_dead_unit_points_the_closed_form_says_are_breakable(threat):
    """Against the closed form: the example is breakable iff the unit can reach 0.1 in the ball, i.e.
    ``reach - gap > 0.1``. Gaps at 0.3-0.9 of the reach are breakable (beyond random starts: at least
    4.8 standard deviations of ``w . (x - x0)`` at a uniform random point of the ball), gaps above the
    reach are not; every point stays in the ball, and ``seen`` (the unit switched on somewhere) holds
    exactly for the breakable ones."""
    x0 = torch.full((1, 1, 16, 16), 0.5)
    model, w = _dead_unit_net(x0, torch.zeros(1))
    reach = float(_reach(w, x0, threat)[0])
    fractions = torch.tensor([0.3, 0.6, 0.9, 1.05, 1.5])
    x = x0.repeat(5, 1, 1, 1)
    y = torch.zeros(5, dtype=torch.long)
    breakable = reach - fractions * reach > 0.1
    assert breakable.tolist() == [True, True, True, False, False]
    hits, seen = [], []
    for k in range(5):  # one bias per example: the unit is off by fractions[k] * reach at x0
        with torch.no_grad():
            model[1].bias.fill_(-float(w @ x0.flatten()) - float(fractions[k]) * reach)
        assert zero_jacobian(model, x[k:k + 1]).item()
        res = escape_pgd(model, x[k:k + 1], y[k:k + 1], threat, steps=50)
        assert bool(threat.contains(res.points, x[k:k + 1]).all())
        with torch.no_grad():
            hits.append(model(res.points).argmax(1).item() != 0)
        seen.append(bool(res.info["seen"].item()))
    assert hits == breakable.tolist()
    assert seen == breakable.tolist()  # the unbreakable unit never switches on: no gradient anywhere


def test_autoattack_breaks_dead_unit_points_by_the_escape_attack():
    """End to end: AutoAttack alone cannot see a point 0.6 of the reach away from switching its unit on
    (flat loss for APGD, FAB and Square); the escape attack breaks it, ``info`` counts the hit and
    nothing is left unresolved. A point beyond the reach is proven robust by the bounds instead."""
    threat = ThreatModel("linf", 0.1)
    x = torch.full((2, 1, 16, 16), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    model, w = _dead_unit_net(x[:1], torch.zeros(1))
    reach = float(_reach(w, x[:1], threat)[0])
    results = []
    for frac in (0.6, 1.5):
        with torch.no_grad():
            model[1].bias.fill_(-float(w @ x[0].flatten()) - frac * reach)
        res = autoattack(model, x[:1], y[:1], threat, batch_size=1, square_queries=300, square_escalation=0)
        with torch.no_grad():
            results.append((model(res.points).argmax(1).item(), res.info["blind_escape_hits"],
                            res.info["unresolved"]))
    assert results == [(1, 1, 0), (0, 0, 0)]
