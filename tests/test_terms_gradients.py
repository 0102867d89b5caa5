"""gradient_penalty, jacobian and curvature (CURE) against closed forms, finite differences and
torch.autograd.functional.jacobian; parameter gradients (double backprop) against finite differences
(torch.autograd.gradcheck)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlib.models import build_model
from robustlib.regularizers import (
    StepContext,
    build_objective,
    curvature_penalty,
    jacobian_frobenius_estimate,
    jacobian_frobenius_exact,
)
from robustlib.threat import ThreatModel


def linear_model(W: torch.Tensor, b: torch.Tensor) -> nn.Module:
    lin = nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin)


def data(b=5, d=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c, d, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    x = torch.rand(b, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b,), generator=g)
    return W, bias, x, y


def term_value(spec, model, x, y, eps=0.1, gen=None):
    obj = build_objective(spec)
    return obj(StepContext(model, x, y, ThreatModel("linf", eps), generator=gen))[0]


def test_gradient_penalty_of_loss_on_a_linear_model_is_the_closed_form():
    W, b, x, y = data()
    model = linear_model(W, b)
    value = term_value({"gradient_penalty": {"of": "loss"}}, model, x, y)
    p = F.softmax(x @ W.T + b, 1)
    g = (p - F.one_hot(y, 4).double()) @ W  # grad_x CE = W^T (softmax - e_y)
    assert float(value.detach()) == pytest.approx(float(g.pow(2).sum(1).mean()), rel=1e-10)


def test_gradient_penalty_of_logits_on_a_linear_model_is_the_frobenius_norm():
    W, b, x, y = data()
    value = term_value({"gradient_penalty": {"of": "logits"}}, linear_model(W, b), x, y)
    assert float(value.detach()) == pytest.approx(float(W.pow(2).sum()), rel=1e-10)


@pytest.mark.parametrize("of", ["loss", "logits"])
def test_gradient_penalty_parameter_gradient_matches_finite_differences(of):
    W, b, x, y = data(b=3, d=4, c=3)
    # a two-layer ReLU net in functional form so gradcheck can perturb the weights
    g = torch.Generator().manual_seed(1)
    W1 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    W2 = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)

    class Net(nn.Module):
        def __init__(self, w1, c1, w2):
            super().__init__()
            self.w1, self.c1, self.w2 = w1, c1, w2

        def forward(self, inp):
            return F.relu(inp @ self.w1.T + self.c1) @ self.w2.T

    def penalty(w1, c1, w2):
        return term_value({"gradient_penalty": {"of": of}}, Net(w1, c1, w2), x, y)

    with torch.no_grad():
        pre = x @ W1.T + b1
    assert float(pre.abs().min()) > 1e-3  # away from ReLU kinks: finite differences are valid
    assert torch.autograd.gradcheck(penalty, (W1, b1, W2), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_jacobian_exact_matches_autograd_functional_jacobian():
    torch.manual_seed(0)
    model = build_model("smallcnn", image_size=8, width=16, num_classes=5).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    exact = jacobian_frobenius_exact(model, x)
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda t: model(t.unsqueeze(0)).squeeze(0), x[i])
        assert float(exact[i]) == pytest.approx(float(J.pow(2).sum()), rel=1e-10)


def test_jacobian_projection_estimate_is_unbiased():
    torch.manual_seed(0)
    model = build_model("mlp", image_size=4, hidden=[16, 16], num_classes=6).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    exact = jacobian_frobenius_exact(model, x)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([jacobian_frobenius_estimate(model, x, 1, gen, create_graph=False)
                         for _ in range(3000)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert (draws.std(0) > 0.05 * exact).all()  # a genuinely random estimator
    assert ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)
    # more projections average draws: same mean, smaller spread
    draws8 = torch.stack([jacobian_frobenius_estimate(model, x, 8, gen, create_graph=False)
                          for _ in range(400)])
    assert ((draws8.mean(0) - exact).abs() < 4 * draws8.std(0) / 20).all()
    assert (draws8.std(0) < draws.std(0)).all()


def test_jacobian_term_is_the_batch_mean_of_the_estimate_and_differentiable():
    torch.manual_seed(0)
    model = build_model("mlp", image_size=4, hidden=[8], num_classes=3)
    x = torch.rand(5, 1, 4, 4)
    y = torch.zeros(5, dtype=torch.long)
    value = term_value({"jacobian": {"n_proj": 2}}, model, x, y, gen=torch.Generator().manual_seed(7))
    ref = jacobian_frobenius_estimate(model, x, 2, torch.Generator().manual_seed(7)).mean()
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in model.parameters())


def finite_difference_gradient(model, x, y, step=1e-6):
    """Central differences of the per-example cross-entropy w.r.t. every input coordinate."""
    flat = x.flatten(1)
    grad = torch.zeros_like(flat)
    with torch.no_grad():
        for k in range(flat.shape[1]):
            e = torch.zeros_like(flat)
            e[:, k] = step
            up = F.cross_entropy(model((flat + e).view_as(x)), y, reduction="none")
            dn = F.cross_entropy(model((flat - e).view_as(x)), y, reduction="none")
            grad[:, k] = (up - dn) / (2 * step)
    return grad.view_as(x)


def test_curvature_matches_finite_differences():
    torch.manual_seed(0)
    model = build_model("mlp", image_size=3, hidden=[10, 10], num_classes=4).double()
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64) * 0.6 + 0.2
    y = torch.tensor([0, 1, 2, 3])
    h = 0.3
    value = curvature_penalty(model, x, y, h)
    g0 = finite_difference_gradient(model, x, y)
    z = g0.sign() / g0.sign().flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    g1 = finite_difference_gradient(model, x + h * z, y)
    ref = (g1 - g0).flatten(1).pow(2).sum(1)
    assert float(ref.max()) > 1e-4  # the gradient does change along z: not 0 == 0
    assert torch.allclose(value, ref, rtol=1e-5, atol=1e-9)
    # the term: batch mean, h defaulting to the L2 radius of the ball (eps * sqrt(d) for L-inf)
    t = term_value({"curvature": {"h": None}}, model, x, y, eps=0.1)
    ref_t = curvature_penalty(model, x, y, 0.1 * 3).mean()
    assert float(t.detach()) == pytest.approx(float(ref_t.detach()), rel=1e-10)


def test_curvature_parameter_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    W1 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W2 = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])

    class Net(nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.a, self.b = a, b

        def forward(self, inp):
            return F.relu(inp @ self.a.T) @ self.b.T

    assert torch.autograd.gradcheck(lambda a, b: curvature_penalty(Net(a, b), x, y, 0.2).sum(), (W1, W2),
                                    eps=1e-6, atol=1e-6, rtol=1e-4)
