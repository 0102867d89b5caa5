"""Complete verification of ReLU networks by mixed-integer linear programming (Tjeng et al. 2019,
"Evaluating Robustness of Neural Networks with Mixed Integer Programming", MIPVerify), solved with
HiGHS (``highspy``).

For each example, cheapest first:

1. the clean example misclassified -> ``falsified`` (counterexample = x);
2. given ``counterexamples`` (e.g. the attack stage's points) that replay -> ``falsified``;
3. bounds (``robustlib.bounds``: interval, or progressive CROWN) prove ``z_y - z_j > 0`` for all j
   -> ``verified`` (method ``bounds``);
4. a short PGD (margin loss) whose point replays -> ``falsified``;
5. the MILP: the exact network on the L-inf eps-ball intersected with [0, 1]; each unstable ReLU
   gets a binary and big-M constraints from the computed bounds (Tjeng et al., eq. 5), stable ReLUs
   are fixed (active = identity, inactive = 0); MaxPool2d is encoded exactly (one binary per window
   candidate). For every class j not already excluded by the bounds (most threatening first) it
   minimizes ``z_y - z_j``, stopping as soon as the solver's dual bound is > ``margin_tol`` (class
   excluded) or an improving solution with margin < 0 replays as a float32 PyTorch counterexample
   (inside the ball, in [0, 1], misclassified). A solver point that does not replay never counts:
   the search goes on, and if nothing replays the result is ``unknown``.

The time limit covers the whole example. A timeout, solver error or numerical trouble gives
``unknown``, never ``verified``. "verified" is a statement about the network in exact arithmetic
with a margin of at least ``margin_tol``; bounds are computed in float64 and padded before use.

L2 threat models: HiGHS has no quadratic constraints, so no MILP is run; the bounds on the
enclosing L-inf box (sound) may verify, otherwise the verdict is ``unknown``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlib.bounds import (
    BOUND_METHODS,
    _affine,
    _pool_args,
    affine_linear_part,
    input_box,
    margin_lower_bounds,
    to_sequential,
)
from robustlib.threat import NORMS, ThreatModel

logger = logging.getLogger(__name__)

__all__ = ["VerifyResult", "verify", "verify_one", "summarize", "replays", "MILPEncoder", "VERDICTS"]

VERDICTS = ("verified", "falsified", "unknown")
REPLAY_RTOL = 1e-6
"""Relative slack on eps when replaying *given* counterexamples (float32 rounding of x +- eps)."""


@dataclass
class VerifyResult:
    """The outcome for one example."""

    verdict: str
    seconds: float
    counterexample: Tensor | None
    unstable: int
    stable: int
    method: str
    detail: str

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
# MILP encoding
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def _affine_block_matrix(layers: list[nn.Module], in_shape: tuple[int, ...],
                         chunk: int = 256) -> tuple[sp.csr_matrix, np.ndarray, tuple[int, ...]]:
    """The affine map of consecutive affine layers as ``(M, c, out_shape)`` with ``f(h) = M h + c``
    (float64, flattened), found by probing with unit vectors (linear part) and zero (bias)."""
    n_in = int(math.prod(in_shape))
    zero = torch.zeros(1, *in_shape, dtype=torch.float64)
    h = zero
    for layer in layers:
        h = _affine(layer, h)
    out_shape, c = tuple(h.shape[1:]), h.flatten().numpy().copy()
    cols = []
    for s in range(0, n_in, chunk):
        k = min(chunk, n_in - s)
        e = torch.zeros(k, n_in, dtype=torch.float64)
        e[torch.arange(k), torch.arange(s, s + k)] = 1.0
        h = e.view(k, *in_shape)
        for layer in layers:
            h = affine_linear_part(layer, h)
        cols.append(sp.csr_matrix(h.reshape(k, -1).numpy()).T)
    M = sp.hstack(cols).tocsr() if cols else sp.csr_matrix((len(c), 0))
    M.eliminate_zeros()
    return M, c, out_shape


class MILPEncoder:
    """MIPVerify's encoding of a fixed network (Tjeng et al. 2019, section 4); the affine blocks are
    turned into sparse float64 matrices once, and ``build`` assembles the MILP for one input box."""

    def __init__(self, net: nn.Sequential, in_shape: tuple[int, ...]) -> None:
        self.net = net
        self.in_shape = tuple(in_shape)
        self.stages: list[tuple] = []  # ("affine", M, c) | ("relu", index) | ("maxpool", index, layer, shape)
        shape, block = self.in_shape, []
        for i, layer in enumerate(net):
            if isinstance(layer, (nn.ReLU, nn.MaxPool2d)):
                if block:
                    M, c, shape = _affine_block_matrix(block, shape)
                    self.stages.append(("affine", M, c))
                    block = []
                if isinstance(layer, nn.ReLU):
                    self.stages.append(("relu", i))
                else:
                    self.stages.append(("maxpool", i, layer, shape))
                    k = _pool_args(layer)
                    shape = (shape[0], shape[1] // k[0], shape[2] // k[1])
            else:
                block.append(layer)
        if block:
            M, c, shape = _affine_block_matrix(block, shape)
            self.stages.append(("affine", M, c))
        if len(shape) != 1:
            raise ValueError(f"the network must end with logits (B, C), got per-example shape {shape}")
        self.num_classes = shape[0]

    def build(self, lower: np.ndarray, upper: np.ndarray, act_bounds: dict[int, tuple[np.ndarray, np.ndarray]],
              pad: float = 1e-7) -> _MILP:
        """The MILP over the input box ``[lower, upper]`` (flat float64), with ``act_bounds[i]`` the
        (flat) bounds of the input of nonlinear layer ``i``, padded by ``pad * (1 + |b|)``."""
        n0 = lower.size
        col_lo, col_hi, integ = [lower.astype(np.float64)], [upper.astype(np.float64)], [np.zeros(n0, bool)]
        ncol = n0
        rows: list[sp.csr_matrix] = []
        row_lo: list[np.ndarray] = []
        row_hi: list[np.ndarray] = []
        # current layer as an affine expression P v + q of the variables v (P grows in columns)
        P = sp.identity(n0, format="csr", dtype=np.float64)
        q = np.zeros(n0)

        def new_cols(lo: np.ndarray, hi: np.ndarray, is_int: bool) -> np.ndarray:
            nonlocal ncol
            idx = np.arange(ncol, ncol + len(lo))
            col_lo.append(lo)
            col_hi.append(hi)
            integ.append(np.full(len(lo), is_int))
            ncol += len(lo)
            return idx

        def widen(m: sp.csr_matrix) -> sp.csr_matrix:
            m = m.tocsr()
            m.resize((m.shape[0], ncol))
            return m

        def unit(rows_n: int, row_idx: np.ndarray, col_idx: np.ndarray, vals) -> sp.csr_matrix:
            return sp.csr_matrix((np.broadcast_to(np.asarray(vals, dtype=np.float64), (len(row_idx),)),
                                  (row_idx, col_idx)), shape=(rows_n, ncol))

        unstable_total = stable_total = 0
        for stage in self.stages:
            if stage[0] == "affine":
                _, M, c = stage
                P, q = (M @ widen(P)).tocsr(), M @ q + c
                continue
            l, u = act_bounds[stage[1]]
            l = l - pad * (1 + np.abs(l))
            u = u + pad * (1 + np.abs(u))
            if stage[0] == "relu":
                act, inact = l >= 0, u <= 0
                unst = np.flatnonzero(~(act | inact))
                unstable_total += len(unst)
                stable_total += int(act.sum() + inact.sum())
                k = len(unst)
                a = new_cols(np.zeros(k), u[unst], False)
                d = new_cols(np.zeros(k), np.ones(k), True)
                P = widen(P)
                Pu = P[unst]
                r = np.arange(k)
                # a >= z ; a <= z - l (1 - d) ; a <= u d
                rows += [unit(k, r, a, 1.0) - Pu,
                         unit(k, r, a, 1.0) - Pu - unit(k, r, d, l[unst]),
                         unit(k, r, a, 1.0) - unit(k, r, d, u[unst])]
                row_lo += [q[unst], np.full(k, -np.inf), np.full(k, -np.inf)]
                row_hi += [np.full(k, np.inf), q[unst] - l[unst], np.zeros(k)]
                keep = sp.diags(act.astype(np.float64))
                P = (keep @ P + unit(len(l), unst, a, 1.0)).tocsr()
                q = np.where(act, q, 0.0)
            else:
                _, _, layer, shape = stage
                kh, kw = _pool_args(layer)
                C, H, W = shape
                Ho, Wo = H // kh, W // kw
                grid = np.arange(C * H * W).reshape(C, H, W)[:, :Ho * kh, :Wo * kw]
                win = grid.reshape(C, Ho, kh, Wo, kw).transpose(0, 1, 3, 2, 4).reshape(C * Ho * Wo, kh * kw)
                P = widen(P)
                new_P_rows, new_q = [], np.zeros(len(win))
                for o, members in enumerate(win):
                    lw, uw = l[members], u[members]
                    cand = members[uw >= lw.max()]
                    if len(cand) == 1:
                        new_P_rows.append(P[cand[0]])
                        new_q[o] = q[cand[0]]
                        continue
                    U = float(u[cand].max())
                    yv = new_cols(np.array([float(l[cand].max())]), np.array([U]), False)[0]
                    s = new_cols(np.zeros(len(cand)), np.ones(len(cand)), True)
                    P = widen(P)
                    Pc, m = P[cand], len(cand)
                    r = np.arange(m)
                    # y >= z_i ; y <= z_i + (U - l_i)(1 - s_i) ; sum s = 1
                    rows += [unit(m, r, np.full(m, yv), 1.0) - Pc,
                             unit(m, r, np.full(m, yv), 1.0) - Pc + unit(m, r, s, U - l[cand]),
                             unit(1, np.zeros(m, int), s, 1.0)]
                    row_lo += [q[cand], np.full(m, -np.inf), np.ones(1)]
                    row_hi += [np.full(m, np.inf), q[cand] + U - l[cand], np.ones(1)]
                    new_P_rows.append(unit(1, np.zeros(1, int), np.array([yv]), 1.0))
                    unstable_total += 1
                P = sp.vstack([widen(p) for p in new_P_rows]).tocsr()
                q = new_q
        A = sp.vstack([widen(r) for r in rows]).tocsr() if rows else sp.csr_matrix((0, ncol))
        return _MILP(A, np.concatenate(row_lo) if rows else np.zeros(0),
                     np.concatenate(row_hi) if rows else np.zeros(0), np.concatenate(col_lo),
                     np.concatenate(col_hi), np.concatenate(integ), widen(P), q, n0,
                     unstable_total, stable_total)


@dataclass
class _MILP:
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray
    P_out: sp.csr_matrix  # logits = P_out v + q_out
    q_out: np.ndarray
    n_input: int
    unstable: int
    stable: int

    def highs(self, threads: int = 1):
        """A ``highspy.Highs`` instance holding the constraints (objective set per class)."""
        import highspy

        h = highspy.Highs()
        h.silent()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", int(threads))
        lp = highspy.HighsLp()
        n = self.col_lo.size
        lp.num_col_, lp.num_row_ = n, self.A.shape[0]
        lp.col_cost_ = np.zeros(n)
        lp.col_lower_, lp.col_upper_ = self.col_lo, self.col_hi
        lp.row_lower_, lp.row_upper_ = self.row_lo, self.row_hi
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, self.A.shape[0]
        lp.a_matrix_.start_ = self.A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = self.A.indices.astype(np.int32)
        lp.a_matrix_.value_ = self.A.data
        lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                           for b in self.integer]
        status = h.passModel(lp)
        if status == highspy.HighsStatus.kWarning:
            logger.debug("HiGHS accepted the model with a warning (e.g. tiny coefficients dropped)")
        elif status != highspy.HighsStatus.kOk:
            raise RuntimeError(f"HiGHS rejected the model: {status}")
        return h

    def margin_objective(self, y: int, j: int) -> tuple[np.ndarray, float]:
        row = self.P_out[y] - self.P_out[j]
        return np.asarray(row.todense()).ravel(), float(self.q_out[y] - self.q_out[j])


@dataclass
class _ClassOutcome:
    status: str  # "excluded" | "counterexample" | "unknown"
    dual_bound: float
    primal: float
    point: Tensor | None
    detail: str


def _solve_class(h, milp: _MILP, y: int, j: int, time_left: float, margin_tol: float, replay_fn,
                 stop_early: bool = True) -> _ClassOutcome:
    """Minimize ``z_y - z_j``; stop once the dual bound exceeds ``margin_tol`` or a point with
    negative margin replays (``replay_fn(x_flat) -> Tensor | None``)."""
    import highspy

    cost, offset = milp.margin_objective(y, j)
    h.changeColsCost(len(cost), np.arange(len(cost), dtype=np.int32), cost)
    h.changeObjectiveOffset(offset)
    h.setOptionValue("time_limit", max(float(time_left), 1e-3))
    state = {"point": None, "dual": -math.inf, "tried": 0}

    def on_improving(e) -> None:
        if e.data_out.objective_function_value < 0 and state["point"] is None and state["tried"] < 50:
            state["tried"] += 1
            state["point"] = replay_fn(np.array(e.data_out.mip_solution[:milp.n_input]))

    def on_interrupt(e) -> None:
        state["dual"] = max(state["dual"], e.data_out.mip_dual_bound)
        if stop_early and (state["point"] is not None or e.data_out.mip_dual_bound > margin_tol):
            e.interrupt()

    h.cbMipImprovingSolution.subscribe(on_improving)
    h.cbMipInterrupt.subscribe(on_interrupt)
    try:
        h.run()
    finally:
        h.cbMipImprovingSolution.unsubscribe(on_improving)
        h.cbMipInterrupt.unsubscribe(on_interrupt)
    status = h.getModelStatus()
    info = h.getInfo()
    name = h.modelStatusToString(status)
    dual = float(info.mip_dual_bound) if status != highspy.HighsModelStatus.kInfeasible else math.inf
    if status == highspy.HighsModelStatus.kInterrupt:
        dual = max(dual, state["dual"]) if math.isfinite(dual) else state["dual"]
    primal = float(info.objective_function_value) if info.primal_solution_status else math.inf
    if state["point"] is not None:
        return _ClassOutcome("counterexample", dual, primal, state["point"], f"class {j}: replayed")
    if status == highspy.HighsModelStatus.kInfeasible:
        # The box and the encoding are never empty in exact arithmetic: numerical trouble.
        return _ClassOutcome("unknown", dual, primal, None, f"class {j}: solver reports infeasible")
    if status in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kInterrupt,
                  highspy.HighsModelStatus.kTimeLimit) and dual > margin_tol:
        return _ClassOutcome("excluded", dual, primal, None, f"class {j}: dual bound {dual:.4g}")
    if primal < 0 and info.primal_solution_status:
        sol = np.array(h.getSolution().col_value[:milp.n_input])
        point = replay_fn(sol)
        if point is not None:
            return _ClassOutcome("counterexample", dual, primal, point, f"class {j}: replayed")
        return _ClassOutcome("unknown", dual, primal, None,
                             f"class {j}: {name}, margin {primal:.3g} < 0 but the point does not replay")
    return _ClassOutcome("unknown", dual, primal, None, f"class {j}: {name}, dual bound {dual:.4g}")


# ---------------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------------
def _margin_loss(y: Tensor):
    def loss(logits: Tensor) -> Tensor:
        zy = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return other - zy
    return loss


def _ascend_from(model: nn.Module, start: Tensor, x: Tensor, y: Tensor, threat: ThreatModel,
                 steps: int, step: float | None = None) -> Tensor:
    """Projected sign-gradient ascent on the margin loss from ``start``: the short pre-MILP attack
    (step 2.5 eps / steps) and the push of a solver point that misses by float rounding into a
    float32 counterexample (small steps); every result is replayed before it counts."""
    step = threat.default_step_size(steps) if step is None else step
    x_adv = start.clone()
    loss_fn = _margin_loss(y)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(model(x_adv)).sum(), x_adv)
        x_adv = threat.project(x_adv.detach() + step * g.sign(), x)
    return x_adv.detach()


def verify_one(model: nn.Module, x: Tensor, y: int, eps: float, norm: str = "linf", time_limit: float = 60.0,
               counterexample: Tensor | None = None, bounds: str = "linear", attack_steps: int = 20,
               margin_tol: float = 1e-5, seed: int = 0, encoder: MILPEncoder | None = None) -> VerifyResult:
    """Verify one example ``x`` (per-example shape, no batch dimension); see ``verify``."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    net = to_sequential(model)
    xb, yb = x.unsqueeze(0).float(), torch.tensor([int(y)])

    def result(verdict, ce, unstable, stable, method, detail) -> VerifyResult:
        return VerifyResult(verdict, time.perf_counter() - t0, ce, unstable, stable, method, detail)

    with torch.no_grad():
        if bool(replays(model, xb, xb, yb, eps, norm)[0]):
            return result("falsified", x.clone(), 0, 0, "attack", "clean example misclassified")
        if counterexample is not None:
            ce = counterexample.reshape(xb.shape).float()
            if bool(replays(model, ce, xb, yb, eps, norm, rtol=REPLAY_RTOL)[0]):
                return result("falsified", ce[0].clone(), 0, 0, "attack", "given counterexample replays")
        lower, upper = input_box(xb.double(), eps, norm)
        m, act = margin_lower_bounds(net, lower, upper, yb, bounds)
        relus = [i for i, layer in enumerate(net) if isinstance(layer, nn.ReLU)]
        unstable = sum(int(((act[i][0] < 0) & (act[i][1] > 0)).sum()) for i in relus)
        stable = sum(act[i][0].numel() for i in relus) - unstable
        m = m[0]
        if bool((m > margin_tol).all()):
            return result("verified", None, unstable, stable, "bounds",
                          f"{bounds} bounds: min margin >= {float(m.min()):.4g}")
    if attack_steps > 0 and norm == "linf" and eps > 0:
        gen = torch.Generator().manual_seed(seed)
        threat = ThreatModel(norm, eps)
        start = threat.random_start(xb, gen)
        with torch.enable_grad():
            x_adv = _ascend_from(model, start, xb, yb, threat, attack_steps)
        if bool(replays(model, x_adv, xb, yb, eps, norm)[0]):
            return result("falsified", x_adv[0], unstable, stable, "attack", f"PGD-{attack_steps} (margin loss)")
    if norm != "linf":
        return result("unknown", None, unstable, stable, "bounds",
                      "L2: no MILP (HiGHS has no quadratic constraints); bounds inconclusive")
    if time.perf_counter() >= deadline:
        return result("unknown", None, unstable, stable, "bounds", "time limit reached before the MILP")

    x_flat = xb[0]

    def replay_fn(sol: np.ndarray) -> Tensor | None:
        p = _snap_into_ball(sol, x_flat, eps).unsqueeze(0)
        if bool(replays(model, p, xb, yb, eps, norm)[0]):
            return p[0]
        with torch.enable_grad():
            p2 = _ascend_from(model, p, xb, yb, ThreatModel("linf", eps), 5, step=eps / 20)
        p2 = _snap_into_ball(p2.double().flatten().numpy(), x_flat, eps).unsqueeze(0)
        return p2[0] if bool(replays(model, p2, xb, yb, eps, norm)[0]) else None

    try:
        enc = encoder if encoder is not None else MILPEncoder(net, tuple(x.shape))
        act_np = {i: (lo[0].flatten().numpy(), hi[0].flatten().numpy()) for i, (lo, hi) in act.items()}
        milp = enc.build(lower[0].flatten().numpy(), upper[0].flatten().numpy(), act_np)
    except (RuntimeError, ValueError, MemoryError) as err:
        return result("unknown", None, unstable, stable, "milp", f"could not build the MILP: {err}")
    classes = [int(j) for j in torch.argsort(m) if int(j) != int(y) and float(m[j]) <= margin_tol]
    details, duals = [], []
    for j in classes:
        left = deadline - time.perf_counter()
        if left <= 0:
            return result("unknown", None, milp.unstable, milp.stable, "milp",
                          f"time limit ({time_limit:g} s); " + "; ".join(details))
        try:
            # a fresh solver per class: HiGHS keeps a user interrupt across runs
            out = _solve_class(milp.highs(), milp, int(y), j, left, margin_tol, replay_fn)
        except Exception as err:  # solver errors are never "verified"
            logger.warning("HiGHS failed on class %d: %s", j, err)
            return result("unknown", None, milp.unstable, milp.stable, "milp", f"solver error: {err}")
        if out.status == "counterexample":
            return result("falsified", out.point, milp.unstable, milp.stable, "milp", out.detail)
        if out.status != "excluded":
            timeout = time.perf_counter() >= deadline - 1e-3
            return result("unknown", None, milp.unstable, milp.stable, "milp",
                          ("time limit: " if timeout else "") + out.detail)
        details.append(out.detail)
        duals.append(out.dual_bound)
    return result("verified", None, milp.unstable, milp.stable, "milp",
                  f"{len(classes)} MILPs; min dual bound {min(duals, default=math.inf):.4g}")


def _check_inputs(model, x, y, eps, norm, time_limit, processes, bounds):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (time_limit > 0):
        raise ValueError(f"time_limit must be > 0, got {time_limit}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if bounds not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {bounds!r}; expected one of {BOUND_METHODS}")
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (B, ...) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(x).all() or bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError("inputs must be finite and lie in [0, 1]")
    net = to_sequential(model)
    with torch.no_grad():
        try:
            out = net(x[:1].float())
        except RuntimeError as err:
            raise ValueError(f"input shape {tuple(x.shape[1:])} does not fit the network: {err}") from err
    if out.dim() != 2:
        raise ValueError(f"the network must output logits (B, C), got {tuple(out.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
        raise ValueError(f"labels must be in [0, {out.shape[1]})")
    return net


_WORKER: dict = {}


def _worker_init(model: nn.Module, kwargs: dict) -> None:
    torch.set_num_threads(1)
    _WORKER["model"] = model.eval()
    _WORKER["kwargs"] = kwargs
    _WORKER["encoder"] = None


def _worker_run(task):
    i, x, y, ce = task
    model, kw = _WORKER["model"], _WORKER["kwargs"]
    if _WORKER["encoder"] is None and kw["norm"] == "linf":
        _WORKER["encoder"] = MILPEncoder(to_sequential(model), tuple(x.shape))
    return i, verify_one(model, x, y, counterexample=ce, encoder=_WORKER["encoder"], **kw)


def verify(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf", time_limit: float = 60.0,
           processes: int = 1, counterexamples: Tensor | Sequence[Tensor | None] | None = None,
           bounds: str = "linear", attack_steps: int = 20, margin_tol: float = 1e-5, seed: int = 0,
           progress: bool = True) -> list[VerifyResult]:
    """Complete verification (Tjeng et al. 2019) of ``model`` at each ``(x[i], y[i])`` for the
    ``norm`` ball of radius ``eps`` intersected with [0, 1]; one ``VerifyResult`` per example.

    ``model``: robustlib's MLP/SmallCNN/CWCNN or an ``nn.Sequential`` of Normalize/Flatten/Linear/
    Conv2d/ReLU/MaxPool2d (kernel == stride), evaluated in eval mode; ``x`` in [0, 1].
    ``counterexamples``: optional candidate points (e.g. from attacks), replayed first.
    ``bounds``: ``"linear"`` (progressive CROWN) or ``"interval"`` (IBP) for certification and the
    big-M constants. ``attack_steps``: PGD steps tried before the MILP (0 = none). ``time_limit``:
    seconds per example, whole example. ``processes > 1``: a spawn process pool, 1 torch thread each.
    L2: bounds only (HiGHS has no quadratic constraints), then ``unknown``.
    """
    net = _check_inputs(model, x, y, eps, norm, time_limit, processes, bounds)
    if counterexamples is not None and len(counterexamples) != len(y):
        raise ValueError(f"counterexamples must have one entry per example ({len(y)}), got {len(counterexamples)}")
    ces = [None] * len(y) if counterexamples is None else [None if c is None else c.detach().cpu()
                                                            for c in counterexamples]
    kw = dict(eps=float(eps), norm=norm, time_limit=float(time_limit), bounds=bounds,
              attack_steps=int(attack_steps), margin_tol=float(margin_tol), seed=int(seed))
    was = model.training
    model.eval()
    try:
        tasks = [(i, x[i].detach().cpu().float(), int(y[i]), ces[i]) for i in range(len(y))]
        results: list[VerifyResult | None] = [None] * len(tasks)
        if processes == 1 or len(tasks) <= 1:
            enc = MILPEncoder(net, tuple(x.shape[1:])) if norm == "linf" and len(tasks) else None
            for i, xi, yi, ce in tqdm(tasks, desc="verify", disable=not progress):
                results[i] = verify_one(model, xi, yi, counterexample=ce, encoder=enc, **kw)
        else:
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_worker_init,
                                     initargs=(model, kw)) as pool:
                for i, res in tqdm(pool.map(_worker_run, tasks), total=len(tasks), desc="verify",
                                   disable=not progress):
                    results[i] = res
        return [r for r in results if r is not None]
    finally:
        model.train(was)


def summarize(results: Sequence[VerifyResult]) -> dict:
    """Counts per verdict and method, verified and decided fractions, median/p90 seconds, timeouts
    and unstable-ReLU statistics."""
    n = len(results)
    secs = np.array([r.seconds for r in results], dtype=float)
    unst = np.array([r.unstable for r in results], dtype=float)
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    methods: dict[str, int] = {}
    for r in results:
        methods[r.method] = methods.get(r.method, 0) + 1
    return {
        "n": n,
        **counts,
        "by_method": methods,
        "verified_fraction": counts["verified"] / n if n else float("nan"),
        "decided_fraction": (counts["verified"] + counts["falsified"]) / n if n else float("nan"),
        "median_seconds": float(np.median(secs)) if n else float("nan"),
        "p90_seconds": float(np.percentile(secs, 90)) if n else float("nan"),
        "mean_seconds": float(secs.mean()) if n else float("nan"),
        "timeouts": sum("time limit" in r.detail for r in results),
        "unstable_mean": float(unst.mean()) if n else float("nan"),
        "unstable_median": float(np.median(unst)) if n else float("nan"),
        "unstable_max": int(unst.max()) if n else 0,
    }
