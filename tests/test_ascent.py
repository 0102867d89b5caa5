"""The ascent engine (robustlib.attacks.ascent.maximize) against independent references: torch's Adam,
hand-written loops, and per-example runs (an example's result must not depend on the batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlib.attacks.ascent import AdamStep, Problem, SteepestStep, ascend, ball_problem, cross_entropy, maximize
from robustlib.attacks.common import margin_loss
from robustlib.threat import ThreatModel


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        net[1].weight.mul_(4)  # input-sensitive enough that small perturbations change the class
    return net


def _data(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 3, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_adam_step_matches_torch_adam():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 5, generator=g)
    p = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.01)
    step = AdamStep(0.01)
    state = step.init(theta)
    for t in range(4):
        grad = torch.randn(3, 5, generator=g)
        theta = step(theta, grad, state, t)  # ascent on grad == torch's descent on -grad
        opt.zero_grad()
        p.grad = -grad
        opt.step()
    torch.testing.assert_close(theta, p.detach())


def test_last_iterate_equals_a_hand_written_pgd_loop():
    model, (x, y) = _net(), _data()
    threat = ThreatModel("linf", 0.1)
    start = threat.random_start(x, torch.Generator().manual_seed(3))
    got = ascend(model, x, lambda z: F.cross_entropy(z, y, reduction="none"), threat, 7, 0.03, start=start)
    ref = start.clone()
    for _ in range(7):
        ref.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(ref), y, reduction="sum"), ref)
        ref = (x + (ref.detach() + 0.03 * g.sign() - x).clamp(-0.1, 0.1)).clamp(0, 1)
    assert torch.equal(got, ref)
    assert torch.equal(ascend(model, x, lambda z: z[:, 0], threat, 0, start=start), threat.project(start, x))


def test_keeps_best_iterate_and_first_fooling_one():
    """A margin that rises then falls along the steps: an example never fooled keeps its best iterate."""
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]]))
    y = torch.tensor([0])
    # margin z_1 - z_0 = x + t - t^2: never positive from x = -1 (best at t = 0.5), fooling from x = 0
    for x0, want in ((-1.0, 0.5), (0.0, 0.25)):
        x = torch.tensor([[x0]])
        problem = Problem(x, lambda z, t, idx: margin_loss(z, y[idx]), lambda idx, r, p: torch.zeros(len(idx), 1),
                          lambda t, idx: t, render=lambda t, idx, x=x: x[idx] + (t - t.pow(2)))
        res = maximize(model, problem, 10, SteepestStep(0.25), keep="margin", y=y)
        assert float(res.theta) == want and torch.equal(res.points, x + (res.theta - res.theta.pow(2)))
        assert (float(res.score) == float("inf")) == (x0 == 0.0)


def test_result_of_each_example_does_not_depend_on_the_batch():
    """Early stop removes fooled examples (and their Adam state) from the batch: each example's
    result equals the result of running it alone."""
    model, (x, _) = _net(), _data(16)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example correct at x: all are attacked
    theta0 = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))

    def run(rows):
        problem = Problem(x[rows], lambda z, t, idx: margin_loss(z, y[rows][idx]),
                          lambda idx, r, p: theta0[rows][idx], lambda t, idx: t.clamp(-0.15, 0.15),
                          render=lambda t, idx: (x[rows][idx] + t).clamp(0, 1))
        return maximize(model, problem, 12, AdamStep(0.1), keep="margin", y=y[rows])

    batch = run(torch.arange(16))
    assert bool((batch.score == float("inf")).any()) and bool((batch.score < float("inf")).any())
    for i in range(16):
        alone = run(torch.tensor([i]))
        torch.testing.assert_close(alone.points[0], batch.points[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(alone.score[0], batch.score[i], rtol=0, atol=1e-5)


def test_restarts_warm_start_and_finish():
    """``previous`` is the last iterate of the previous restart; ``finish`` offers a last candidate;
    infeasible iterates are never kept."""
    model, (x, y) = _net(), _data(8)
    seen = []

    def start(idx, r, prev):
        seen.append((r, None if prev is None else prev.clone()))
        return x[idx] if prev is None else prev

    problem = Problem(x, lambda z, t, idx: -margin_loss(z, y[idx]), start, lambda t, idx: t.clamp(0, 1),
                      feasible=lambda img, idx: torch.zeros(len(idx), dtype=torch.bool),
                      finish=lambda t, idx: x[idx])
    res = maximize(model, problem, 3, SteepestStep(0.01), restarts=3, keep="objective")
    assert [r for r, _ in seen] == [0, 1, 2] and seen[0][1] is None and seen[1][1] is not None
    assert torch.equal(res.points, x) and bool((res.score == -float("inf")).all())  # nothing feasible but x


def test_transfer_objective_runs_every_example_and_keeps_highest_loss():
    model, (x, y) = _net(), _data(12)
    threat = ThreatModel("l2", 0.5)
    log = []
    problem = ball_problem(x, cross_entropy(y), threat, generator=torch.Generator().manual_seed(0))
    res = maximize(model, problem, 4, SteepestStep(0.2, "l2"), restarts=2, keep="objective",
                   trace=lambda r, t, idx, img, obj: log.append((idx.clone(), obj.clone())))
    assert all(len(idx) == 12 for idx, _ in log) and len(log) == 10
    best = torch.stack([obj for _, obj in log]).amax(0)
    torch.testing.assert_close(res.score, best)
    assert bool(threat.contains(res.points, x).all())
