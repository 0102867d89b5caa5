"""Soundness and completeness of the MILP verifier (robustlib.verification) against an independent
reference: exhaustive case analysis over activation patterns of tiny ReLU nets with 2-D inputs, each
pattern a linear region whose minimum margin over (region intersected with the box) is an LP solved
by scipy.optimize.linprog; and exhaustive enumeration of max-pool argmax choices."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
import types
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from robustlib.bounds.intervals import ibp_certified, input_box, margin_lower_bounds, to_sequential
from robustlib.bounds.tolerance import margin_tolerance
from robustlib.models import Normalize, build_model
from robustlib.verification import shards, solvers
from robustlib.verification.cascade import _snap_into_ball, replays, summarize
from robustlib.verification.encoding import MILPEncoder
from robustlib.verification.shards import verify
from robustlib.verification.solvers import SOLVERS, _decide, _RunEnd, _Search, solve_class, solver_settings

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------
# Independent reference: depth-first case analysis over ReLU patterns with LP pruning
# ---------------------------------------------------------------------------------------------------
def _lp_min(c: np.ndarray, A: list, b: list, box: list[tuple[float, float]]) -> float | None:
    res = linprog(c, A_ub=np.array(A) if A else None, b_ub=np.array(b) if b else None, bounds=box,
                  method="highs")
    return float(res.fun) if res.status == 0 else None


def reference_min_margins(net: nn.Sequential, lo: np.ndarray, hi: np.ndarray, y: int) -> np.ndarray:
    """Exact ``min over the box of z_y - z_j`` for every j (inf at j = y), for an MLP of Linear/ReLU."""
    lin = [m for m in net if isinstance(m, nn.Linear)]
    Ws = [m.weight.detach().double().numpy() for m in lin]
    bs = [m.bias.detach().double().numpy() for m in lin]
    box = list(zip(lo.tolist(), hi.tolist(), strict=True))
    n_cls = Ws[-1].shape[0]
    best = np.full(n_cls, np.inf)

    def dfs(layer: int, k: int, E: np.ndarray, e: np.ndarray, diag: list[int], A: list, b: list) -> None:
        if k == E.shape[0]:
            D = np.array(diag, dtype=float)
            E2, e2 = Ws[layer + 1] @ (D[:, None] * E), Ws[layer + 1] @ (D * e) + bs[layer + 1]
            if layer + 1 == len(Ws) - 1:
                for j in range(n_cls):
                    if j == y:
                        continue
                    v = _lp_min(E2[y] - E2[j], A, b, box)
                    if v is not None:
                        best[j] = min(best[j], v + e2[y] - e2[j])
            else:
                dfs(layer + 1, 0, E2, e2, [], A, b)
            return
        for active in (1, 0):
            row, rhs = (-E[k], e[k]) if active else (E[k], -e[k])
            if _lp_min(np.zeros(E.shape[1]), A + [row], b + [rhs], box) is not None:
                dfs(layer, k + 1, E, e, diag + [active], A + [row], b + [rhs])

    dfs(0, 0, Ws[0], bs[0], [], [], [])
    best[y] = np.inf
    return best


def _tiny_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():  # steeper than the default init, so that the cases are not all robust
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
                m.bias.mul_(2.0)
    return net


CASES = [(0, 0.05), (1, 0.15), (2, 0.3), (3, 0.1), (4, 0.25), (5, 0.2), (6, 0.4)]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed,eps", CASES)
def test_verdicts_and_milp_optimum_match_exhaustive_case_analysis(seed, eps, solver):
    """Both solvers against the same reference: verdicts (verified exactly when the true margin
    exceeds the tolerance, falsified with a replaying point when it is negative) and, for every class,
    the MILP optimum (the encoding is exact) and a sound dual bound."""
    net = _tiny_net(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 2, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    verdicts = {b: verify(net, x, y, eps, bounds=b, attack_steps=0, solver=solver, progress=False)
                for b in ("linear", "interval")}
    enc = MILPEncoder(to_sequential(net), (2,))
    for i in range(3):
        lo, hi = input_box(x[i:i + 1].double(), eps)
        ref = reference_min_margins(net, lo[0].numpy(), hi[0].numpy(), int(y[i]))
        true_min = float(ref.min())
        for b, res in verdicts.items():
            r = res[i]
            if r.verdict == "verified":
                assert true_min > r.tol and r.tol <= r.margin <= true_min + 1e-6, (b, true_min, r)
            if true_min > r.tol + 1e-4:
                assert r.verdict == "verified", (b, true_min, r)
            elif true_min < -1e-4:
                assert r.verdict == "falsified", (b, true_min, r)
                assert bool(replays(net, r.counterexample[None], x[i:i + 1], y[i:i + 1], eps)[0])
            else:
                assert r.verdict != "verified" or true_min > r.tol
        # the MILP's optimum for every class equals the reference (the encoding is exact)
        with torch.no_grad():
            _, act = margin_lower_bounds(to_sequential(net), lo, hi, y[i:i + 1], "interval")
        milp = enc.build(lo[0].numpy(), hi[0].numpy(),
                         {k: (a[0].flatten().numpy(), c[0].flatten().numpy()) for k, (a, c) in act.items()})
        for j in range(3):
            if j == int(y[i]):
                continue
            out = solve_class(milp, solver, int(y[i]), j, 30.0, 1e-5, lambda s: None, stop_early=False)
            assert out.dual_bound <= ref[j] + 1e-6
            assert out.primal == pytest.approx(ref[j], abs=1e-5 + 1e-4 * abs(ref[j]))
            # with early stopping the verdict of the class follows the reference too
            early = solve_class(milp, solver, int(y[i]), j, 30.0, 1e-5, lambda s: None)
            assert early.dual_bound <= ref[j] + 1e-6
            if ref[j] > 1e-3:
                assert early.status == "excluded", (solver, ref[j], early)


def test_reference_sees_both_verdicts():
    """The cases above are informative: some are robust, some are not."""
    signs = set()
    for seed, eps in CASES[:3]:
        net = _tiny_net(seed)
        x = torch.rand(3, 2, generator=torch.Generator().manual_seed(seed))
        y = net(x).argmax(1)
        for i in range(3):
            lo, hi = input_box(x[i:i + 1].double(), eps)
            signs.add(bool(reference_min_margins(net, lo[0].numpy(), hi[0].numpy(), int(y[i])).min() > 0))
    assert signs == {True, False}


def test_maxpool_encoding_is_exact():
    """Max-pool on 2 channels x 2 windows of 4: the MILP optimum equals the minimum over all 4^4
    argmax choices, each an LP on the 8-D box."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 3)).double().eval()
    x = torch.rand(1, 1, 2, 4, dtype=torch.float64)
    y = int(net(x).argmax(1))
    eps = 0.2
    lo, hi = input_box(x, eps)
    conv, fc = net[0], net[3]
    # pre-pool values: v[c, p] = w_c x_p + b_c, p over the 8 pixels; windows: columns {0,1} and {2,3}
    wc, bc = conv.weight.detach().view(2).numpy(), conv.bias.detach().numpy()
    Wf, bf = fc.weight.detach().numpy(), fc.bias.detach().numpy()
    windows = [[0, 1, 4, 5], [2, 3, 6, 7]]  # flat pixel indices of a 2x4 image
    box = list(zip(lo.flatten().tolist(), hi.flatten().tolist(), strict=True))
    ref = np.full(3, np.inf)
    for choice in itertools.product(range(4), repeat=4):
        A, b, pooled = [], [], []  # pooled[o] = (coef over x, const)
        for o, (c, w) in enumerate(itertools.product(range(2), range(2))):
            star = windows[w][choice[o]]
            for p in windows[w]:
                if p != star:  # v[c, p] <= v[c, star]
                    row = np.zeros(8)
                    row[p] += wc[c]
                    row[star] -= wc[c]
                    A.append(row)
                    b.append(0.0)
            coef = np.zeros(8)
            coef[star] = wc[c]
            pooled.append((coef, bc[c]))
        P = np.stack([p[0] for p in pooled])
        q = np.array([p[1] for p in pooled])  # Flatten order: (c, w)
        for j in range(3):
            if j != y:
                v = _lp_min((Wf[y] - Wf[j]) @ P, A, b, box)
                if v is not None:
                    ref[j] = min(ref[j], v + (Wf[y] - Wf[j]) @ q + bf[y] - bf[j])
    with torch.no_grad():
        _, act = margin_lower_bounds(net, lo, hi, torch.tensor([y]), "linear")
    milp = MILPEncoder(net, (1, 2, 4)).build(
        lo.flatten().numpy(), hi.flatten().numpy(),
        {k: (a[0].flatten().numpy(), c[0].flatten().numpy()) for k, (a, c) in act.items()})
    for solver in SOLVERS:
        for j in range(3):
            if j != y:
                out = solve_class(milp, solver, y, j, 30.0, 1e-5, lambda s: None, stop_early=False)
                assert out.dual_bound <= ref[j] + 1e-6
                assert out.primal == pytest.approx(ref[j], abs=1e-5 + 1e-4 * abs(ref[j]))
        res = verify(net.float(), x.float(), torch.tensor([y]), eps, attack_steps=0, solver=solver,
                     progress=False)[0]
        assert res.verdict == ("verified" if ref.min() > res.tol else "falsified")


# ---------------------------------------------------------------------------------------------------
# Planted counterexamples
# ---------------------------------------------------------------------------------------------------
def _planted(fire: bool, eps: float = 0.1, d: int = 36) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A 1x6x6 -> 10 -> 3 net whose hidden unit 0 fires only near the corner x0 + eps * s; it pushes
    class 2 over class 0 there. With ``fire=False`` the threshold is out of the ball's reach."""
    g = torch.Generator().manual_seed(0)
    x0 = 0.2 + 0.6 * torch.rand(1, 1, 6, 6, generator=g)
    s = torch.randint(0, 2, (d,), generator=g).float() * 2 - 1
    net = nn.Sequential(Normalize((0.0,), (1.0,)), nn.Flatten(), nn.Linear(d, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        net[2].weight.copy_(0.05 * torch.randn(10, d, generator=g))
        net[2].bias.copy_(0.05 * torch.randn(10, generator=g))
        reach = eps * d  # s . (x - x0) over the ball
        t = (0.9 if fire else 1.1) * reach
        net[2].weight[0] = s
        net[2].bias[0] = -(s @ x0.flatten()) - t
        net[4].weight.copy_(0.01 * torch.randn(3, 10, generator=g))
        net[4].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
        net[4].weight[:, 0] = torch.tensor([0.0, 0.0, 20.0 / (0.1 * reach)])
    return net.eval(), x0, torch.tensor([0])


@pytest.mark.parametrize("bounds", ["linear", "interval"])
def test_planted_counterexample_is_found_and_replays(bounds):
    net, x0, y = _planted(fire=True)
    assert net(x0).argmax(1).item() == 0
    res = verify(net, x0, y, 0.1, bounds=bounds, attack_steps=0, progress=False)[0]
    assert res.verdict == "falsified" and res.method == "milp"
    assert bool(replays(net, res.counterexample[None], x0, y, 0.1)[0])
    assert float((res.counterexample - x0[0]).abs().max()) <= 0.1
    # the same net with the trigger out of reach is verified
    net2, x0, y = _planted(fire=False)
    res2 = verify(net2, x0, y, 0.1, bounds=bounds, attack_steps=0, progress=False)[0]
    assert res2.verdict == "verified"


def test_counterexamples_replay_before_anything_else():
    net, x0, y = _planted(fire=True)
    corner = x0 + 0.1 * torch.sign(net[2].weight[0].detach()).view_as(x0)
    assert net(corner).argmax(1).item() != 0
    res = verify(net, x0, y, 0.1, counterexamples=corner, attack_steps=0, progress=False)[0]
    assert res.verdict == "falsified" and res.method == "attack"
    # a point outside the ball is no counterexample: the MILP decides instead
    far = x0 + 0.3 * torch.sign(net[2].weight[0].detach()).view_as(x0)
    res = verify(net, x0, y, 0.1, counterexamples=[far.clamp(0, 1)[0]], attack_steps=0, progress=False)[0]
    assert res.method == "milp" and res.verdict == "falsified"
    # the clean example misclassified: falsified with x itself
    res = verify(net, x0, torch.tensor([2]), 0.1, progress=False)[0]
    assert res.verdict == "falsified" and torch.equal(res.counterexample, x0[0])


def test_time_limit_is_honoured_and_never_verifies():
    torch.manual_seed(0)
    model = build_model("mlp", image_size=6, hidden=(64, 64, 64), num_classes=10)
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    res = verify(model, x, y, 0.3, time_limit=0.3, attack_steps=0, progress=False)
    for i, r in enumerate(res):
        assert r.verdict != "verified"
        assert r.seconds < 0.3 + 2.0
        if r.verdict == "unknown":
            assert "time limit" in r.detail
        else:
            assert bool(replays(model, r.counterexample[None], x[i:i + 1], y[i:i + 1], 0.3)[0])
    s = summarize(res)
    assert s["n"] == 2 and s["verified"] == 0 and s["unknown"] >= 1 and s["timeouts"] == s["unknown"]


def test_l2_uses_bounds_only():
    net, x0, y = _planted(fire=False)
    r = verify(net, x0, y, 0.01, norm="l2", attack_steps=0, progress=False)[0]
    assert r.verdict == "verified" and r.method == "bounds"
    r = verify(net, x0, y, 2.0, norm="l2", attack_steps=0, progress=False)[0]
    assert r.verdict in ("unknown", "falsified") and r.method != "milp"


def test_summary_fields():
    net, x0, y = _planted(fire=True)
    net2, _, _ = _planted(fire=False)
    res = verify(net, x0, y, 0.1, progress=False) + verify(net2, x0, y, 0.1, progress=False)
    s = summarize(res)
    assert s["verified"] == 1 and s["falsified"] == 1 and s["decided_fraction"] == 1.0
    assert s["median_seconds"] == pytest.approx(float(np.median([r.seconds for r in res])))
    assert math.isfinite(s["p90_seconds"]) and s["unstable_max"] >= 0


def test_bad_input_gives_clear_errors():
    net, x0, y = _planted(fire=True)
    with pytest.raises(ValueError, match="eps"):
        verify(net, x0, y, -0.1)
    with pytest.raises(ValueError, match="norm"):
        verify(net, x0, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="not supported"):
        verify(nn.Sequential(nn.Flatten(), nn.Linear(36, 3), nn.Sigmoid()), x0, y, 0.1)
    with pytest.raises(ValueError, match="does not fit"):
        verify(net, torch.rand(1, 1, 5, 5), y, 0.1)
    with pytest.raises(ValueError, match="x must be"):
        verify(net, x0, torch.tensor([0, 1]), 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        verify(net, x0 + 1.0, y, 0.1)
    with pytest.raises(ValueError, match="labels"):
        verify(net, x0, torch.tensor([7]), 0.1)
    with pytest.raises(ValueError, match="time_limit"):
        verify(net, x0, y, 0.1, time_limit=0)
    with pytest.raises(ValueError, match="bound method"):
        verify(net, x0, y, 0.1, bounds="lp")


@pytest.mark.slow
def test_process_pool_gives_the_same_verdicts():
    net, x0, y = _planted(fire=True)
    net2, _, _ = _planted(fire=False)
    x = torch.cat([x0, x0])
    seq = verify(net, x, torch.tensor([0, 2]), 0.1, progress=False)
    par = verify(net, x, torch.tensor([0, 2]), 0.1, processes=2, progress=False)
    assert [r.verdict for r in seq] == [r.verdict for r in par] == ["falsified", "falsified"]
    assert [r.verdict for r in verify(net2, x, torch.tensor([0, 0]), 0.1, processes=2, progress=False)] == \
        ["verified", "verified"]


# ---------------------------------------------------------------------------------------------------
# Numerical safety: a positive margin below the tolerance is never "verified"
# ---------------------------------------------------------------------------------------------------
def _constant_margin_net(delta: float) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A 2x2-input net whose margin z_0 - z_1 equals ``delta`` everywhere (rows 0 and 1 of the last
    layer are equal, their biases differ by ``delta``), with unstable ReLUs so the MILP runs; class 2
    is far below."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        net[3].weight[1] = net[3].weight[0]
        net[3].bias.copy_(torch.tensor([1.0, 1.0 - delta, -3.0]))
        net[1].bias.zero_()
    x = torch.full((1, 1, 2, 2), 0.5)
    return net, x, torch.tensor([0])


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("bounds", ["linear", "interval"])
def test_positive_margin_below_tolerance_is_not_verified(solver, bounds):
    net, x, y = _constant_margin_net(3e-5)
    b = net[3].bias.detach().double()
    delta = float(b[0] - b[1])  # the true margin everywhere: positive, but below the tolerance (>= atol = 1e-4)
    assert 2e-5 < delta < 4e-5
    lo, hi = input_box(x.double(), 0.2)
    with torch.no_grad():
        assert float(margin_lower_bounds(net, lo, hi, y, "interval")[0][0, 1]) == pytest.approx(delta, rel=1e-9)
    r = verify(net, x, y, 0.2, bounds=bounds, attack_steps=0, solver=solver, progress=False)[0]
    assert r.tol > delta and r.verdict == "unknown" and r.reason == "within_tolerance", r
    assert r.method == "milp" and r.unstable > 0
    assert not bool(ibp_certified(net, x, y, 0.2)[0])
    # the same margin counts once the tolerance is below it, and a margin above the tolerance counts
    r = verify(net, x, y, 0.2, bounds=bounds, attack_steps=0, solver=solver, margin_atol=1e-6, margin_rtol=0,
               progress=False)[0]
    assert r.verdict == "verified" and r.margin == pytest.approx(delta, rel=1e-3) and r.tol < delta
    net, x, y = _constant_margin_net(1e-2)
    r = verify(net, x, y, 0.2, bounds=bounds, attack_steps=0, solver=solver, progress=False)[0]
    assert r.verdict == "verified" and r.margin > r.tol
    assert bool(ibp_certified(net, x, y, 0.2)[0])


def test_tolerance_has_an_absolute_a_relative_and_a_float32_part():
    net, x, y = _constant_margin_net(1e-2)
    lo, hi = input_box(x.double(), 0.2)
    t = margin_tolerance(to_sequential(net), lo, hi, atol=1e-4, rtol=1e-5)
    assert float(t.tol[0]) == pytest.approx(1e-4 + 1e-5 * float(t.logit_scale[0]))
    assert 3.0 <= float(t.logit_scale[0]) and 0 < float(t.float32_error[0]) < 1e-4
    t32 = margin_tolerance(to_sequential(net), lo, hi, atol=1e-4, rtol=1e-5, float32=True)
    assert float(t32.tol[0]) == pytest.approx(float(t.tol[0]) + 2 * float(t.float32_error[0]))
    r = verify(net, x, y, 0.2, attack_steps=0, margin_float32=True, progress=False)[0]
    assert r.tol == pytest.approx(float(t32.tol[0]), rel=1e-6) and r.verdict == "verified"
    with pytest.raises(ValueError, match="tolerance"):
        margin_tolerance(to_sequential(net), lo, hi, atol=-1.0)


# ---------------------------------------------------------------------------------------------------
# Resume: a run killed with SIGKILL after its first shard, run again, redoes no finished example
# ---------------------------------------------------------------------------------------------------
_RESUME_SCRIPT = r"""
import sys, time
from pathlib import Path
import torch
from torch import nn
import robustlib.verification.shards as V

shard_dir, log, delay, out = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
torch.manual_seed(1)  # as _tiny_net(1): verified and falsified examples, some by the MILP
net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
with torch.no_grad():
    for m in net:
        if isinstance(m, nn.Linear):
            m.weight.mul_(3.0)
            m.bias.mul_(2.0)
x = torch.rand(8, 2, generator=torch.Generator().manual_seed(1))
y = net(x).argmax(1)
original = V.verify_one

def logged(model, xi, yi, **kw):  # records which example is computed, slowly
    i = int((x == xi).all(1).nonzero()[0])
    with log.open("a") as f:
        f.write(f"{i}\n")
    time.sleep(delay)
    return original(model, xi, yi, **kw)

V.verify_one = logged
res = V.verify(net, x, y, 0.3, attack_steps=0, progress=False, shard_dir=shard_dir or None, shard_size=2)
torch.save([(r.verdict, r.method, r.unstable, None if r.margin != r.margin else round(r.margin, 9), r.reason)
            for r in res], out)
"""


def test_verify_killed_after_a_shard_resumes_without_redoing_finished_examples(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_RESUME_SCRIPT)
    shards, log1, log2 = tmp_path / "shards", tmp_path / "first.log", tmp_path / "second.log"

    def start(shard_dir, log, delay, out):
        return subprocess.Popen([sys.executable, str(script), str(shard_dir), str(log), str(delay), str(out)],
                                env={**os.environ, "PYTHONPATH": os.getcwd()})

    proc = start(shards, log1, 1.0, tmp_path / "killed.pt")
    t0 = time.time()
    while not list(shards.glob("*.pt")) and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "killed.pt").exists()
    saved = sorted(shards.glob("*.pt"))
    assert 1 <= len(saved) < 4  # killed mid-way, after the first block of 2 examples was persisted
    done = {0, 1} if len(saved) == 1 else set(range(2 * len(saved)))
    assert done <= {int(v) for v in log1.read_text().split()}
    assert start(shards, log2, 0.0, tmp_path / "resumed.pt").wait() == 0
    redone = [int(v) for v in log2.read_text().split()]
    assert sorted(redone) == sorted(set(range(8)) - done)  # the finished examples were not recomputed
    assert start("", tmp_path / "ref.log", 0.0, tmp_path / "ref.pt").wait() == 0  # uninterrupted, no shards
    resumed, ref = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "ref.pt")
    assert resumed == ref and len(ref) == 8
    assert {r[0] for r in ref} == {"verified", "falsified"}  # both kinds of result go through the shards
    assert len(list(shards.glob("*.pt"))) == 4


# ---------------------------------------------------------------------------------------------------
# One decision for both solvers (robustlib.verification.solvers._decide)
# ---------------------------------------------------------------------------------------------------
def _end(**kw) -> _RunEnd:
    base = dict(finished=True, infeasible=False, timed_out=False, dual=-1.0, primal=-1.0, has_primal=True,
                incumbent=lambda: np.zeros(2), status_label="S", unfinished_detail="S status x",
                infeasible_detail="S reports infeasible")
    return _RunEnd(**{**base, **kw})


_POINT = torch.zeros(2)


@pytest.mark.parametrize("end,replayed_during_search,replays_at_end,expected", [
    (_end(dual=0.5), True, False, ("counterexample", "")),  # a point replayed during the search wins
    (_end(infeasible=True, finished=False), False, True, ("unknown", "solver_infeasible")),
    (_end(dual=0.5, primal=-1.0), False, True, ("excluded", "")),  # proven before the incumbent is looked at
    (_end(dual=1e-6, primal=-1.0), False, True, ("counterexample", "")),  # dual within tol: the incumbent replays
    (_end(dual=-1.0, primal=-1.0, finished=False), False, False, ("unknown", "solver_status")),
    (_end(dual=-1.0, primal=-1.0, timed_out=True), False, False, ("unknown", "timeout")),
    (_end(dual=-1.0, primal=-1.0), False, False, ("unknown", "no_replay")),
    (_end(dual=-1.0, primal=-1e-6), False, False, ("unknown", "within_tolerance")),
    (_end(dual=-1.0, primal=math.inf, has_primal=False), False, True, ("unknown", "within_tolerance")),
])
def test_the_decision_on_a_class_is_one_table(end, replayed_during_search, replays_at_end, expected):
    """The verdict on a class from a solver-neutral end of a solve: the order of the checks (replayed
    point, infeasible, dual bound above the tolerance, final incumbent, unfinished status, why unknown)."""
    search = _Search(lambda sol: _POINT if replays_at_end else None, margin_tol=1e-4, stop_early=True)
    if replayed_during_search:
        search.point = _POINT
    out = _decide(end, search, 3)
    assert (out.status, out.reason) == expected
    assert (out.point is not None) == (out.status == "counterexample")
    assert out.detail.startswith("class 3: ")


def _replay_in_ball(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float):
    def replay(sol: np.ndarray) -> torch.Tensor | None:
        p = _snap_into_ball(sol, x[0], eps)[None]
        return p[0] if bool(replays(net, p, x, y, eps)[0]) else None

    return replay


@pytest.mark.skipif(importlib.util.find_spec("pyscipopt") is None,
                    reason="pyscipopt is not installed: there is no SCIP path to compare with HiGHS")
def test_highs_and_scip_paths_reach_the_same_verdicts_through_one_decision(monkeypatch):
    """On the tiny nets of the exhaustive cases, every class solve (with and without early stopping,
    with a small and a large tolerance) ends with the same status and reason for HiGHS and SCIP, and
    both adapters hand their end of the solve to the one decision function; so do whole examples."""
    decided = []

    def spy(end, search, j):
        decided.append(end.status_label)
        return _decide(end, search, j)

    monkeypatch.setattr(solvers, "_decide", spy)
    n_solves, statuses = 0, set()
    for seed, eps in CASES[:5]:
        net = _tiny_net(seed)
        x = torch.rand(3, 2, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            y = net(x).argmax(1)
        by_solver = {s: verify(net, x, y, eps, attack_steps=0, solver=s, progress=False) for s in SOLVERS}
        assert [(r.verdict, r.method, r.reason) for r in by_solver["highs"]] == \
               [(r.verdict, r.method, r.reason) for r in by_solver["scip"]]
        enc = MILPEncoder(to_sequential(net), (2,))
        for i in range(3):
            lo, hi = input_box(x[i:i + 1].double(), eps)
            with torch.no_grad():
                _, act = margin_lower_bounds(to_sequential(net), lo, hi, y[i:i + 1], "linear")
            milp = enc.build(lo[0].numpy(), hi[0].numpy(),
                             {k: (a[0].flatten().numpy(), c[0].flatten().numpy()) for k, (a, c) in act.items()})
            replay = _replay_in_ball(net, x[i:i + 1], y[i:i + 1], eps)
            for j, stop_early, tol in itertools.product(range(3), (True, False), (1e-5, 0.5)):
                if j == int(y[i]):
                    continue
                outs = {s: solve_class(milp, s, int(y[i]), j, 30.0, tol, replay, stop_early=stop_early)
                        for s in SOLVERS}
                assert (outs["highs"].status, outs["highs"].reason) == (outs["scip"].status, outs["scip"].reason), outs
                n_solves += 1
                statuses.add((outs["highs"].status, outs["highs"].reason))
    assert {"excluded", "counterexample", "unknown"} <= {s for s, _ in statuses}  # every verdict was compared
    scip_calls = sum(label.startswith("SCIP ") for label in decided)
    assert scip_calls >= n_solves and len(decided) - scip_calls >= n_solves


# ---------------------------------------------------------------------------------------------------
# Shards written before the verifier was split into modules (commit 744dfda) still load
# ---------------------------------------------------------------------------------------------------
PRE_SPLIT = "744dfda"
PRE_SPLIT_FILE = "robustlib/verification/milp.py"  # the verifier in one module, before this split


def _pre_split_shard_code(root, monkeypatch) -> types.ModuleType:
    """``VerifyResult``, ``verify_key``, ``_shard_file`` and ``_save_shard`` (with ``_hash_tensor``) as
    they were in ``PRE_SPLIT_FILE`` at commit ``PRE_SPLIT``, read from git and loaded as a module (the
    rest of that file imports names that have since moved)."""
    try:
        src = subprocess.run(["git", "show", f"{PRE_SPLIT}:{PRE_SPLIT_FILE}"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"the pre-split source ({PRE_SPLIT}) is not available from git here: {err}")
    wanted = {"VerifyResult", "_hash_tensor", "verify_key", "_shard_file", "_save_shard"}
    tree = ast.parse(src)
    future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    tree.body = future + [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in wanted]
    assert {getattr(n, "name", None) for n in tree.body} == wanted | {None}
    mod = types.ModuleType(f"pre_split_shards_{PRE_SPLIT}")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    mod.__dict__.update(hashlib=hashlib, json=json, os=os, math=math, Path=Path, torch=torch, nn=nn,
                        Tensor=torch.Tensor, Sequence=Sequence, dataclass=dataclass, asdict=asdict)
    exec(compile(tree, f"{PRE_SPLIT}:{PRE_SPLIT_FILE}", "exec", dont_inherit=True), mod.__dict__)
    return mod


def _as_tuple(r) -> tuple:
    ce = None if r.counterexample is None else r.counterexample.tolist()
    return (r.verdict, r.seconds, ce, r.unstable, r.stable, r.method, r.detail, repr(r.margin), repr(r.tol), r.reason)


def _zip_records(path: Path) -> dict[str, bytes]:
    """The records of a torch.save zip file, named without the archive's root folder."""
    with zipfile.ZipFile(path) as z:
        return {name.split("/", 1)[1]: z.read(name) for name in z.namelist()}


def test_shards_written_before_the_split_load_and_keep_their_records(tmp_path, root, monkeypatch):
    old = _pre_split_shard_code(root, monkeypatch)
    net = _tiny_net(1)
    x = torch.rand(4, 2, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1)
    settings = {"eps": 0.3, "solver_settings": solver_settings("highs")}
    for ces in ([None] * 4, [None, x[1], None, x[3] + 0.01]):
        assert old.verify_key(net, x, y, ces, settings) == shards.verify_key(net, x, y, ces, settings)
    res = verify(net, x, y, 0.3, attack_steps=0, progress=False, shard_dir=tmp_path / "new", shard_size=2)
    assert {r.verdict for r in res} == {"verified", "falsified"}
    new_files = sorted((tmp_path / "new").glob("*.pt"))
    key = torch.load(new_files[0], weights_only=True)["key"]
    for s in (0, 2):  # the same results, saved by the pre-split code
        old._save_shard(old._shard_file(tmp_path / "old", key, s), key, s,
                        [old.VerifyResult(**{f: getattr(r, f) for f in r.__dataclass_fields__}) for r in res[s:s + 2]])
    old_files = sorted((tmp_path / "old").glob("*.pt"))
    assert [p.name for p in old_files] == [p.name for p in new_files]
    for o, n in zip(old_files, new_files, strict=True):
        # the same records; only the zip's root folder differs (the file's name before, "archive" now)
        assert _zip_records(o) == _zip_records(n)
        assert zipfile.ZipFile(n).namelist()[0].startswith("archive/")
    # a run over the old shards recomputes nothing and returns what they hold
    monkeypatch.setattr(shards, "verify_one", lambda *a, **k: pytest.fail("recomputed an example a shard holds"))
    again = verify(net, x, y, 0.3, attack_steps=0, progress=False, shard_dir=tmp_path / "old", shard_size=2)
    assert [_as_tuple(r) for r in again] == [_as_tuple(r) for r in res]
    # and a shard's bytes depend on its contents only
    shards._save_shard(tmp_path / "a.pt", key, 0, res[:2])
    shards._save_shard(tmp_path / "b" / "c.pt", key, 0, res[:2])
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "c.pt").read_bytes() == new_files[0].read_bytes()
