import itertools

import pytest
import torch

from robustlib.threat import ThreatModel


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown norm"):
        ThreatModel("l3", 0.1)
    for eps in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            ThreatModel("linf", eps)


def test_linf_projection_is_the_closest_point_of_the_box_intersection():
    # Brute force in 1-D per coordinate: the closest point of [x-eps, x+eps] ∩ [0, 1] to a is the clip.
    torch.manual_seed(0)
    x = torch.rand(64, 3)
    a = x + 0.5 * torch.randn(64, 3)
    p = ThreatModel("linf", 0.1).project(a, x)
    grid = torch.linspace(0, 1, 10001)
    for i, j in itertools.product(range(8), range(3)):
        feasible = grid[(grid - x[i, j]).abs() <= 0.1 + 1e-7]
        best = feasible[(feasible - a[i, j]).abs().argmin()]
        assert abs(float(p[i, j] - best)) <= 2e-4


def test_l2_projection_matches_closed_form_inside_the_box():
    torch.manual_seed(1)
    x = torch.full((16, 10), 0.5)
    d = torch.randn(16, 10) * 0.2
    tm = ThreatModel("l2", 0.05)
    p = tm.project(x + d, x)
    expected = x + d * torch.clamp(0.05 / d.norm(dim=1, keepdim=True), max=1.0)
    assert torch.allclose(p, expected, atol=1e-6)
    assert bool(tm.contains(p, x).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_and_projection_stay_in_the_ball(norm):
    torch.manual_seed(2)
    tm = ThreatModel(norm, 0.3)
    x = torch.rand(200, 1, 5, 5)
    g = torch.Generator().manual_seed(0)
    s = tm.random_start(x, g)
    assert bool(tm.contains(s, x).all())
    far = tm.project(x + 5 * torch.randn_like(x), x)
    assert bool(tm.contains(far, x).all())
    # projecting twice changes nothing
    assert torch.allclose(tm.project(far, x), far, atol=1e-6)


def test_random_corner_is_a_corner_and_seeded():
    tm = ThreatModel("linf", 0.25)
    x = torch.rand(10, 3, 4, 4)
    a = tm.random_corner(x, torch.Generator().manual_seed(5))
    b = tm.random_corner(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {-0.25, 0.25}
    assert abs(float((a > 0).float().mean()) - 0.5) < 0.1


def test_steepest_ascent_directions():
    g = torch.tensor([[3.0, -4.0]])
    assert torch.equal(ThreatModel("linf", 1).steepest_ascent(g), torch.tensor([[1.0, -1.0]]))
    assert torch.allclose(ThreatModel("l2", 1).steepest_ascent(g), torch.tensor([[0.6, -0.8]]))
    assert ThreatModel("linf", 0.3).default_step_size(20) == pytest.approx(2.5 * 0.3 / 20)
