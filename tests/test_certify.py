"""Ball certificates for the attacks' blind spots (robustlib.attacks.certify) against independent
references: row norms against autograd's Jacobian, soundness against dense sampling and PGD inside the
ball, a closed-form case where only the exact L2 ball bound (not the enclosing box) proves robustness."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlib.attacks.certify import affine_row_norms, certified_in_ball
from robustlib.attacks.gradient import pgd
from robustlib.bounds.intervals import ibp_certified, to_sequential
from robustlib.models import build_model
from robustlib.threat import ThreatModel

torch.set_num_threads(1)


def test_row_norms_match_the_jacobian():
    torch.manual_seed(0)
    model = build_model("smallcnn", in_channels=3, image_size=8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    block = to_sequential(model)[:2].double()  # Normalize, Conv2d
    jac = torch.autograd.functional.jacobian(lambda v: block(v.view(1, 3, 8, 8)).flatten(),
                                             torch.rand(3 * 8 * 8, dtype=torch.float64))
    ours = affine_row_norms(block, (3, 8, 8)).flatten()
    assert torch.allclose(ours, jac.norm(dim=1), rtol=1e-10, atol=1e-12)


def _sampled_in_ball(x: torch.Tensor, threat: ThreatModel, k: int, gen: torch.Generator) -> torch.Tensor:
    d = torch.randn(k, *x.shape, generator=gen, dtype=x.dtype)
    if threat.norm == "l2":
        d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * x.dim()) * threat.eps  # on the sphere
    else:
        d = d.sign() * threat.eps  # corners
    return threat.project(x + d, x.expand_as(d))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.25)])
def test_certificates_are_sound(norm, eps):
    """Every certified example keeps its label at 300 sampled points of the ball and under PGD; and some are
    certified, and some not (eps where the bounds are partly tight)."""
    torch.manual_seed(1)
    model = build_model("mlp", in_channels=1, image_size=6, hidden=(24, 24)).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 6, 6, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = ThreatModel(norm, eps)
    cert = certified_in_ball(model, x, y, threat)
    assert cert.any() and not cert.all()
    adv = pgd(model, x, y, threat, steps=50, restarts=3, generator=torch.Generator().manual_seed(0)).points
    with torch.no_grad():
        assert (model(adv[cert]).argmax(1) == y[cert]).all()
        for i in cert.nonzero().flatten().tolist():
            pts = _sampled_in_ball(x[i], threat, 300, gen)
            assert (model(pts).argmax(1) == y[i]).all()


def test_l2_ball_bound_proves_what_the_enclosing_box_cannot():
    """First layer mean(x) - 0.9 (one neuron): over the L2 ball of radius 1 around an image of mean 0.5 it
    is at most 0.5 + 1/sqrt(n) - 0.9 < 0, so the ReLU is off and the logits constant -- robust; over the
    enclosing box (all of [0, 1]^n) it reaches 0.1 > 0, so interval bounds cannot prove it."""
    n = 36
    first = nn.Linear(n, 1)
    last = nn.Linear(1, 2)
    with torch.no_grad():
        first.weight.fill_(1.0 / n)
        first.bias.fill_(-0.9)
        last.weight.copy_(torch.tensor([[-5.0], [5.0]]))
        last.bias.copy_(torch.tensor([1.0, 0.0]))
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), last).eval()
    x = torch.full((1, 1, 6, 6), 0.5)
    y = torch.tensor([0])
    threat = ThreatModel("l2", 1.0)
    assert not ibp_certified(model, x, y, threat.eps, "l2").item()
    assert certified_in_ball(model, x, y, threat).item()
    x_far = torch.full((1, 1, 6, 6), 0.85)  # mean 0.85: the ball reaches mean 0.85 + 1/6 > 0.9, label flips
    assert not certified_in_ball(model, x_far, y, threat).item()
    with torch.no_grad():
        assert model(x_far + 1.0 / 6).argmax(1).item() == 1  # the flip is real: the certificate was right to refuse
