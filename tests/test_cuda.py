"""CUDA paths: the same computations on the GPU agree with the CPU (skipped where no GPU is present).

Run on a GPU machine with ``pytest tests/test_cuda.py``; CI machines have none, so these skip there.
"""

from __future__ import annotations

import pytest
import torch

from robustlib.attacks.autoattack import autoattack
from robustlib.attacks.gradient import fgsm, pgd
from robustlib.bounds.intervals import ibp_certified, margin_lower_bounds, to_sequential
from robustlib.bounds.lipschitz import lipschitz_upper_bound
from robustlib.evaluation.worst_case import evaluate_attacks
from robustlib.models import build_model
from robustlib.regularizers import build_objective
from robustlib.regularizers.core import StepContext
from robustlib.threat import ThreatModel
from robustlib.training.loop import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _data(n=64, shape=(3, 32, 32), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_paper_objective_trains_on_cuda_preactresnet18():
    x, y = _data(256)
    cfg = TrainConfig(model="preactresnet18", model_kwargs={"in_channels": 3, "image_size": 32, "num_classes": 10},
                      objective={"ce": 1.0, "hamming": {"weight": 2400.0, "alpha": 8.0}, "stability": {"weight": 0.8}},
                      epochs=1, batch_size=64, lr=0.01, eps=8 / 255)
    res = train(cfg, x, y, x[:64], y[:64], device="cuda", progress=False)
    p = next(res.model.parameters())
    assert p.is_cuda and all(torch.isfinite(q).all() for q in res.model.parameters())


def test_deterministic_objectives_on_cuda_match_cpu():
    torch.manual_seed(0)
    model = build_model("smallcnn", in_channels=1, image_size=28, num_classes=10).double()
    x, y = _data(32, (1, 28, 28))
    x = x.double()
    for spec in ({"ce": 1.0, "rs_loss": 0.1, "ibp": 0.5},
                 {"ce": 1.0, "gradient_penalty": 1.0, "curvature": 1.0, "margin": 1.0}):
        obj = build_objective(spec)
        vals = []
        for dev in ("cpu", "cuda"):
            ctx = StepContext(model.to(dev), x.to(dev), y.to(dev), ThreatModel("linf", 0.1), progress=0.5)
            vals.append(float(obj(ctx)[0].detach()))
        assert vals[1] == pytest.approx(vals[0], rel=1e-6), spec


def test_attacks_and_bounds_on_cuda():
    torch.manual_seed(0)
    model = build_model("smallcnn", in_channels=1, image_size=28, num_classes=10).eval()
    x, y = _data(48, (1, 28, 28))
    model_c, xc, yc = model.cuda(), x.cuda(), y.cuda()
    threat = ThreatModel("linf", 0.1)
    for res in (fgsm(model_c, xc, yc, threat), pgd(model_c, xc, yc, threat, steps=10, restarts=2),
                autoattack(model_c, xc, yc, threat)):
        assert res.points.is_cuda and bool(threat.contains(res.points, xc).all())
    table = evaluate_attacks(model_c, xc, yc, {"pgd": lambda m, a, b: pgd(m, a, b, threat, steps=5)},
                             processes=2)  # processes falls back to 1 on CUDA
    assert len(table) == 48
    net = to_sequential(model)
    lo, hi = (x[:4] - 0.05).clamp(0, 1), (x[:4] + 0.05).clamp(0, 1)  # linear bounds: ~0.3 GB per example
    m_cpu, _ = margin_lower_bounds(net.cpu(), lo, hi, y[:4], "linear")
    m_gpu, _ = margin_lower_bounds(net.cuda(), lo.cuda(), hi.cuda(), y[:4].cuda(), "linear")
    torch.testing.assert_close(m_gpu.cpu(), m_cpu, rtol=1e-4, atol=1e-4)
    assert torch.equal(ibp_certified(model.cuda(), xc, yc, 0.05).cpu(), ibp_certified(model.cpu(), x, y, 0.05))
    assert lipschitz_upper_bound(model.cuda()) == pytest.approx(lipschitz_upper_bound(model.cpu()), rel=1e-5)
