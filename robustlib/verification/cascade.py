"""Complete verification of one example (Tjeng et al. 2019, "Evaluating Robustness of Neural Networks
with Mixed Integer Programming", MIPVerify), cheapest first:

1. the clean example misclassified -> ``falsified`` (counterexample = x);
2. a given counterexample (e.g. the attack stage's point) that replays -> ``falsified``;
3. bounds (``robustlib.bounds.intervals``: interval, or progressive CROWN) prove ``z_y - z_j > tol`` for all j
   -> ``verified`` (method ``bounds``);
4. a short PGD (margin loss) whose point replays -> ``falsified``;
5. the MILP (``robustlib.verification.encoding``): the exact network on the L-inf eps-ball intersected
   with [0, 1]. For every class j not already excluded by the bounds (most threatening first) it
   minimizes ``z_y - z_j`` (``robustlib.verification.solvers``), stopping as soon as the solver's dual
   bound is > ``tol`` (class excluded) or an improving solution with margin < 0 replays as a float32
   PyTorch counterexample (inside the ball, in [0, 1], misclassified). A solver point that does not
   replay never counts: the search goes on, and if nothing replays the result is ``unknown``.

Numerical safety. "verified" means a proven lower bound of ``min_j z_y - z_j`` (a bound, or the
solver's dual bound) exceeds ``tol = atol + rtol * S`` (``robustlib.bounds.tolerance.margin_tolerance``):
``S`` bounds the largest logit magnitude over the box (the scale of the big-M constants and of the
objective, against which the solvers' feasibility tolerances act; float32 evaluation errors are ~1e-6
of it). With ``margin_float32`` the tolerance also adds ``2 E``, a rigorous bound on the float32
evaluation error of every logit (Higham's forward error bound for dot products), so that the float32
network's argmax provably cannot flip anywhere in the ball. IBP certificates
(``robustlib.bounds.intervals.ibp_certified``) use the same tolerance.

The time limit covers the whole example. A timeout, solver error, numerical trouble or a proven
margin within the tolerance gives ``unknown`` (with ``reason``), never ``verified``; bounds are
computed in float64 and padded before use as big-M constants.

L2 threat models: the encoding has no quadratic constraints, so no MILP is run; the bounds on the
enclosing L-inf box (sound) may verify, otherwise the verdict is ``unknown``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from robustlib.attacks.ascent import ascend
from robustlib.attacks.common import margin_loss
from robustlib.bounds.intervals import input_box, margin_lower_bounds, to_sequential
from robustlib.bounds.tolerance import MARGIN_ATOL, MARGIN_RTOL, margin_tolerance
from robustlib.threat import ThreatModel
from robustlib.verification.encoding import MILPEncoder
from robustlib.verification.solvers import solve_class

logger = logging.getLogger(__name__)

__all__ = ["VerifyResult", "verify_one", "summarize", "replays", "VERDICTS", "UNKNOWN_REASONS", "REPLAY_RTOL"]

VERDICTS = ("verified", "falsified", "unknown")
UNKNOWN_REASONS = ("timeout", "within_tolerance", "no_replay", "solver_error", "solver_infeasible", "solver_status",
                   "build_error", "l2_no_milp")
"""Why an example is ``unknown``: the time limit; the optimum margin lies within the numerical tolerance of
0 (neither provably > tol nor a replayable counterexample); a negative solver point that float32 PyTorch
does not confirm; solver failure, infeasibility (numerical: the encoding is never empty) or another
status; the MILP could not be built; L2 (bounds only)."""
REPLAY_RTOL = 1e-6
"""Relative slack on eps when replaying *given* counterexamples (float32 rounding of x +- eps)."""


@dataclass
class VerifyResult:
    """The outcome for one example. ``margin``: the proven lower bound of ``min_j z_y - z_j`` over the
    ball when verified (NaN otherwise); ``tol``: the tolerance it had to exceed (NaN when decided
    before any bound was computed); ``reason``: why the verdict is ``unknown`` (``UNKNOWN_REASONS``)."""

    verdict: str
    seconds: float
    counterexample: Tensor | None
    unstable: int
    stable: int
    method: str
    detail: str
    margin: float = math.nan
    tol: float = math.nan
    reason: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("counterexample")
        d["has_counterexample"] = self.counterexample is not None
        return d


# ---------------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def replays(model: nn.Module, x_adv: Tensor, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
            rtol: float = 0.0) -> Tensor:
    """Per-example check, in float32 eval-mode PyTorch, that ``x_adv`` is a counterexample: finite,
    in [0, 1], within ``eps * (1 + rtol)`` of ``x`` in ``norm``, and not classified as ``y``."""
    was = model.training
    model.eval()
    try:
        xa, x0 = x_adv.float(), x.float()
        finite = torch.isfinite(xa).flatten(1).all(1)
        in_box = ((xa >= 0) & (xa <= 1)).flatten(1).all(1)
        d = (xa.double() - x0.double()).flatten(1)
        dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        in_ball = dist <= eps * (1 + rtol)
        wrong = model(torch.nan_to_num(xa)).argmax(1) != y
        return finite & in_box & in_ball & wrong
    finally:
        model.train(was)


def _snap_into_ball(x_star: np.ndarray, x: Tensor, eps: float) -> Tensor:
    """A float32 point equal to ``x_star`` clipped to the L-inf ball and [0, 1], nudged so that it is
    inside in exact arithmetic (float32 rounding of ``x +- eps`` can step outside)."""
    x64 = x.double().flatten()
    lo, hi = (x64 - eps).clamp(0, 1), (x64 + eps).clamp(0, 1)
    p = torch.from_numpy(np.asarray(x_star, dtype=np.float64)).clamp(lo, hi).float()
    for _ in range(4):
        bad = ((p.double() - x64).abs() > eps) | (p < 0) | (p > 1)
        if not bool(bad.any()):
            break
        p = torch.where(bad, torch.nextafter(p, x.float().flatten()), p)
    return p.view_as(x)


# ---------------------------------------------------------------------------------------------------
# The cascade
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Example:
    """One example going through the cascade: the model, the example as a batch of one, its clock, and
    what the bounds found (the tolerance, the unstable and stable ReLUs)."""

    model: nn.Module
    net: nn.Sequential
    x: Tensor  # per-example shape
    y: int
    eps: float
    norm: str
    t0: float
    deadline: float
    tol: float = math.nan
    unstable: int = 0
    stable: int = 0
    xb: Tensor = field(init=False)  # (1, ...) float32
    yb: Tensor = field(init=False)  # (1,)

    def __post_init__(self) -> None:
        self.xb, self.yb = self.x.unsqueeze(0).float(), torch.tensor([self.y])

    def result(self, verdict: str, ce: Tensor | None, unstable: int, stable: int, method: str, detail: str,
               margin: float = math.nan, reason: str = "") -> VerifyResult:
        return VerifyResult(verdict, time.perf_counter() - self.t0, ce, unstable, stable, method, detail,
                            float(margin), float(self.tol), reason)

    def counts(self) -> tuple[int, int]:
        return self.unstable, self.stable


def verify_one(model: nn.Module, x: Tensor, y: int, eps: float, norm: str = "linf", time_limit: float = 60.0,
               counterexample: Tensor | None = None, bounds: str = "linear", attack_steps: int = 20,
               solver: str = "highs", margin_atol: float = MARGIN_ATOL, margin_rtol: float = MARGIN_RTOL,
               margin_float32: bool = False, seed: int = 0, encoder: MILPEncoder | None = None) -> VerifyResult:
    """Verify one example ``x`` (per-example shape, no batch dimension); see
    ``robustlib.verification.shards.verify``."""
    t0 = time.perf_counter()
    ex = _Example(model, to_sequential(model), x, int(y), eps, norm, t0, t0 + time_limit)
    with torch.no_grad():
        done = _replay_known(ex, counterexample)
        if done is not None:
            return done
        lower, upper = input_box(ex.xb.double(), eps, norm)
        m, act = margin_lower_bounds(ex.net, lower, upper, ex.yb, bounds)
        ex.tol = float(margin_tolerance(ex.net, lower, upper, act, margin_atol, margin_rtol, margin_float32).tol[0])
        ex.unstable, ex.stable = _relu_counts(ex.net, act)
        m = m[0]
        if bool((m > ex.tol).all()):
            return ex.result("verified", None, *ex.counts(), "bounds",
                             f"{bounds} bounds: min margin >= {float(m.min()):.4g} > tol {ex.tol:.3g}", float(m.min()))
    if attack_steps > 0 and norm == "linf" and eps > 0:
        done = _attack(ex, attack_steps, seed)
        if done is not None:
            return done
    if norm != "linf":
        return ex.result("unknown", None, *ex.counts(), "bounds",
                         "L2: no MILP (the encoding has no quadratic constraints); bounds inconclusive",
                         reason="l2_no_milp")
    if time.perf_counter() >= ex.deadline:
        return ex.result("unknown", None, *ex.counts(), "bounds", "time limit reached before the MILP",
                         reason="timeout")
    return _milp(ex, encoder, (lower, upper), act, m, solver, time_limit, seed)


def _replay_known(ex: _Example, counterexample: Tensor | None) -> VerifyResult | None:
    """``falsified`` when the clean example is misclassified or the given counterexample replays."""
    if bool(replays(ex.model, ex.xb, ex.xb, ex.yb, ex.eps, ex.norm)[0]):
        return ex.result("falsified", ex.x.clone(), 0, 0, "attack", "clean example misclassified")
    if counterexample is not None:
        ce = counterexample.reshape(ex.xb.shape).float()
        if bool(replays(ex.model, ce, ex.xb, ex.yb, ex.eps, ex.norm, rtol=REPLAY_RTOL)[0]):
            return ex.result("falsified", ce[0].clone(), 0, 0, "attack", "given counterexample replays")
    return None


def _relu_counts(net: nn.Sequential, act: dict[int, tuple[Tensor, Tensor]]) -> tuple[int, int]:
    """Unstable and stable ReLUs under the bounds ``act`` of the nonlinear layers' inputs."""
    relus = [i for i, layer in enumerate(net) if isinstance(layer, nn.ReLU)]
    unstable = sum(int(((act[i][0] < 0) & (act[i][1] > 0)).sum()) for i in relus)
    return unstable, sum(act[i][0].numel() for i in relus) - unstable


def _attack(ex: _Example, attack_steps: int, seed: int) -> VerifyResult | None:
    """``falsified`` when a PGD (margin loss, random start from ``seed``) point replays."""
    gen = torch.Generator().manual_seed(seed)
    threat = ThreatModel(ex.norm, ex.eps)
    start = threat.random_start(ex.xb, gen)
    with torch.enable_grad():
        x_adv = ascend(ex.model, ex.xb, lambda z: margin_loss(z, ex.yb), threat, attack_steps, start=start)
    if bool(replays(ex.model, x_adv, ex.xb, ex.yb, ex.eps, ex.norm)[0]):
        return ex.result("falsified", x_adv[0], *ex.counts(), "attack", f"PGD-{attack_steps} (margin loss)")
    return None


def _replayer(ex: _Example) -> Callable[[np.ndarray], Tensor | None]:
    """``replay_fn`` for the solvers: a solver point (flat float64) snapped into the ball replays, or
    else 5 PGD steps started from it reach a point that replays; ``None`` otherwise."""
    x_flat = ex.xb[0]

    def replay_fn(sol: np.ndarray) -> Tensor | None:
        p = _snap_into_ball(sol, x_flat, ex.eps).unsqueeze(0)
        if bool(replays(ex.model, p, ex.xb, ex.yb, ex.eps, ex.norm)[0]):
            return p[0]
        with torch.enable_grad():
            p2 = ascend(ex.model, ex.xb, lambda z: margin_loss(z, ex.yb), ThreatModel("linf", ex.eps), 5,
                        step_size=ex.eps / 20, start=p)
        p2 = _snap_into_ball(p2.double().flatten().numpy(), x_flat, ex.eps).unsqueeze(0)
        return p2[0] if bool(replays(ex.model, p2, ex.xb, ex.yb, ex.eps, ex.norm)[0]) else None

    return replay_fn


def _milp(ex: _Example, encoder: MILPEncoder | None, box: tuple[Tensor, Tensor],
          act: dict[int, tuple[Tensor, Tensor]], m: Tensor, solver: str, time_limit: float, seed: int) -> VerifyResult:
    """The MILP over the ball for every class the bounds did not exclude, most threatening first."""
    lower, upper = box
    try:
        enc = encoder if encoder is not None else MILPEncoder(ex.net, tuple(ex.x.shape))
        act_np = {i: (lo[0].flatten().numpy(), hi[0].flatten().numpy()) for i, (lo, hi) in act.items()}
        milp = enc.build(lower[0].flatten().numpy(), upper[0].flatten().numpy(), act_np)
    except (RuntimeError, ValueError, MemoryError) as err:
        return ex.result("unknown", None, *ex.counts(), "milp", f"could not build the MILP: {err}",
                         reason="build_error")
    replay_fn = _replayer(ex)
    classes = [int(j) for j in torch.argsort(m) if int(j) != ex.y and float(m[j]) <= ex.tol]
    proven = [float(m[j]) for j in range(len(m)) if j != ex.y and j not in classes]  # excluded by the bounds
    details = []
    for j in classes:
        left = ex.deadline - time.perf_counter()
        if left <= 0:
            return ex.result("unknown", None, milp.unstable, milp.stable, "milp",
                             f"time limit ({time_limit:g} s); " + "; ".join(details), reason="timeout")
        try:
            out = solve_class(milp, solver, ex.y, j, left, ex.tol, replay_fn, seed=seed)
        except ImportError:
            raise
        except Exception as err:  # solver errors are never "verified"
            logger.warning("%s failed on class %d: %s", solver, j, err)
            return ex.result("unknown", None, milp.unstable, milp.stable, "milp", f"{solver} error: {err}",
                             reason="solver_error")
        if out.status == "counterexample":
            return ex.result("falsified", out.point, milp.unstable, milp.stable, "milp", out.detail)
        if out.status != "excluded":
            timeout = out.reason == "timeout" or time.perf_counter() >= ex.deadline - 1e-3
            return ex.result("unknown", None, milp.unstable, milp.stable, "milp",
                             ("time limit: " if timeout else "") + out.detail,
                             reason="timeout" if timeout else out.reason)
        details.append(out.detail)
        proven.append(max(out.dual_bound, float(m[j])))
    return ex.result("verified", None, milp.unstable, milp.stable, "milp",
                     f"{len(classes)} MILPs ({solver}); min proven margin {min(proven):.4g} > tol {ex.tol:.3g}",
                     min(proven))


# ---------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------
def summarize(results: Sequence[VerifyResult]) -> dict:
    """Counts per verdict, method and reason for ``unknown``, verified and decided fractions,
    median/p90 seconds, timeouts, unstable-ReLU statistics and the tolerances used."""
    n = len(results)
    secs = np.array([r.seconds for r in results], dtype=float)
    unst = np.array([r.unstable for r in results], dtype=float)
    tols = np.array([r.tol for r in results if math.isfinite(r.tol)], dtype=float)
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    methods: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for r in results:
        methods[r.method] = methods.get(r.method, 0) + 1
        if r.verdict == "unknown":
            reasons[r.reason or "unspecified"] = reasons.get(r.reason or "unspecified", 0) + 1
    timeouts = reasons.get("timeout", 0)
    return {
        "n": n,
        **counts,
        "by_method": methods,
        "unknown_reasons": reasons,
        "verified_fraction": counts["verified"] / n if n else float("nan"),
        "decided_fraction": (counts["verified"] + counts["falsified"]) / n if n else float("nan"),
        "median_seconds": float(np.median(secs)) if n else float("nan"),
        "p90_seconds": float(np.percentile(secs, 90)) if n else float("nan"),
        "mean_seconds": float(secs.mean()) if n else float("nan"),
        "timeouts": timeouts,
        "unknown_other": counts["unknown"] - timeouts,
        "unstable_mean": float(unst.mean()) if n else float("nan"),
        "unstable_median": float(np.median(unst)) if n else float("nan"),
        "unstable_max": int(unst.max()) if n else 0,
        "tol_median": float(np.median(tols)) if len(tols) else float("nan"),
        "tol_max": float(tols.max()) if len(tols) else float("nan"),
    }
