"""Complete verification of ReLU networks by mixed-integer linear programming (Tjeng et al. 2019,
"Evaluating Robustness of Neural Networks with Mixed Integer Programming", MIPVerify), solved with
HiGHS (``highspy``) or, on the same encoding, SCIP (``pyscipopt``) as an independent second solver.

For each example, cheapest first:

1. the clean example misclassified -> ``falsified`` (counterexample = x);
2. given ``counterexamples`` (e.g. the attack stage's points) that replay -> ``falsified``;
3. bounds (``robustlib.bounds.intervals``: interval, or progressive CROWN) prove ``z_y - z_j > tol`` for all j
   -> ``verified`` (method ``bounds``);
4. a short PGD (margin loss) whose point replays -> ``falsified``;
5. the MILP: the exact network on the L-inf eps-ball intersected with [0, 1]; each unstable ReLU
   gets a binary and big-M constraints from the computed bounds (Tjeng et al., eq. 5), stable ReLUs
   are fixed (active = identity, inactive = 0); MaxPool2d is encoded exactly (one binary per window
   candidate). For every class j not already excluded by the bounds (most threatening first) it
   minimizes ``z_y - z_j``, stopping as soon as the solver's dual bound is > ``tol`` (class
   excluded) or an improving solution with margin < 0 replays as a float32 PyTorch counterexample
   (inside the ball, in [0, 1], misclassified). A solver point that does not replay never counts:
   the search goes on, and if nothing replays the result is ``unknown``.

Numerical safety. "verified" means a proven lower bound of ``min_j z_y - z_j`` (a bound, or the
solver's dual bound) exceeds ``tol = atol + rtol * S`` (``bounds.margin_tolerance``): ``S`` bounds
the largest logit magnitude over the box (the scale of the big-M constants and of the objective,
against which the solvers' feasibility tolerances act; float32 evaluation errors are ~1e-6 of it).
With ``margin_float32`` the tolerance also adds ``2 E``, a rigorous bound on the float32 evaluation
error of every logit (Higham's forward error bound for dot products), so that the float32 network's
argmax provably cannot flip anywhere in the ball. IBP certificates (``bounds.ibp_certified``) use the
same tolerance. Every solver option that affects the result is set explicitly (``HIGHS_OPTIONS``,
``SCIP_PARAMS``) and recorded with the results (``solver_settings``).

The time limit covers the whole example. A timeout, solver error, numerical trouble or a proven
margin within the tolerance gives ``unknown`` (with ``reason``), never ``verified``; bounds are
computed in float64 and padded before use as big-M constants.

Resuming: ``verify(..., shard_dir=...)`` saves the results per block of examples as each block
finishes, keyed by a hash of the whole computation, and a later call loads the finished blocks.

L2 threat models: the encoding has no quadratic constraints, so no MILP is run; the bounds on the
enclosing L-inf box (sound) may verify, otherwise the verdict is ``unknown``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlib.attacks.ascent import ascend
from robustlib.attacks.common import margin_loss
from robustlib.bounds.intervals import (
    BOUND_METHODS,
    MARGIN_ATOL,
    MARGIN_RTOL,
    _affine,
    _pool_args,
    affine_linear_part,
    input_box,
    margin_lower_bounds,
    margin_tolerance,
    to_sequential,
)
from robustlib.pipeline import parallel
from robustlib.threat import NORMS, ThreatModel

logger = logging.getLogger(__name__)

__all__ = ["VerifyResult", "verify", "verify_one", "summarize", "replays", "MILPEncoder", "VERDICTS", "SOLVERS",
           "UNKNOWN_REASONS", "HIGHS_OPTIONS", "SCIP_PARAMS", "solve_class", "solver_settings", "verify_key"]

VERDICTS = ("verified", "falsified", "unknown")
SOLVERS = ("highs", "scip")
UNKNOWN_REASONS = ("timeout", "within_tolerance", "no_replay", "solver_error", "solver_infeasible", "solver_status",
                   "build_error", "l2_no_milp")
"""Why an example is ``unknown``: the time limit; the optimum margin lies within the numerical tolerance of
0 (neither provably > tol nor a replayable counterexample); a negative solver point that float32 PyTorch
does not confirm; solver failure, infeasibility (numerical: the encoding is never empty) or another
status; the MILP could not be built; L2 (bounds only)."""

HIGHS_OPTIONS: dict[str, float | int | str] = {
    "primal_feasibility_tolerance": 1e-7,  # HiGHS defaults, set explicitly (and recorded)
    "dual_feasibility_tolerance": 1e-7,
    "mip_feasibility_tolerance": 1e-6,
    "mip_rel_gap": 1e-4,  # only ends a search early; verdicts use the dual bound, never the gap
    "mip_abs_gap": 1e-6,
    "presolve": "on",
    "threads": 1,
    "random_seed": 0,  # replaced by verify's seed
}
SCIP_PARAMS: dict[str, float | int | bool] = {
    "numerics/feastol": 1e-6,  # = HiGHS's mip_feasibility_tolerance
    "numerics/dualfeastol": 1e-7,  # = HiGHS's dual_feasibility_tolerance
    "numerics/epsilon": 1e-9,
    "limits/gap": 1e-4,
    "limits/absgap": 1e-6,
    "parallel/maxnthreads": 1,
    "lp/threads": 1,
    "randomization/randomseedshift": 0,  # replaced by verify's seed
    "misc/catchctrlc": False,
}
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

    def highs(self, threads: int = 1, seed: int = 0):
        """A ``highspy.Highs`` instance holding the constraints (objective set per class), with the
        options of ``HIGHS_OPTIONS`` set explicitly."""
        import highspy

        h = highspy.Highs()
        h.silent()
        h.setOptionValue("output_flag", False)
        for key, value in HIGHS_OPTIONS.items():
            h.setOptionValue(key, value)
        h.setOptionValue("threads", int(threads))
        h.setOptionValue("random_seed", int(seed))
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

    def scip(self, seed: int = 0):
        """A ``pyscipopt.Model`` holding the same variables, bounds, integrality and rows (``row_lo <=
        A v <= row_hi``) as ``highs``, with ``SCIP_PARAMS`` set explicitly; returns ``(model, vars)``."""
        from pyscipopt import Model
        from pyscipopt.scip import Expr, ExprCons, Term

        model = Model()
        model.hideOutput()
        for key, value in SCIP_PARAMS.items():
            model.setParam(key, value)
        model.setParam("randomization/randomseedshift", int(seed))
        inf = model.infinity()
        xs = [model.addVar(name=f"v{k}", vtype="B" if integ and lo >= 0 and hi <= 1 else ("I" if integ else "C"),
                           lb=None if lo == -np.inf else float(lo), ub=None if hi == np.inf else float(hi))
              for k, (lo, hi, integ) in enumerate(zip(self.col_lo.tolist(), self.col_hi.tolist(),
                                                      self.integer.tolist(), strict=True))]
        terms = [Term(v) for v in xs]
        A = self.A
        for r in range(A.shape[0]):
            a, b = A.indptr[r], A.indptr[r + 1]
            expr = Expr(dict(zip([terms[k] for k in A.indices[a:b].tolist()], A.data[a:b].tolist(), strict=True)))
            lo, hi = float(self.row_lo[r]), float(self.row_hi[r])
            model.addCons(ExprCons(expr, lhs=None if lo <= -inf else lo, rhs=None if hi >= inf else hi),
                          name=f"r{r}")
        return model, xs


@dataclass
class _ClassOutcome:
    status: str  # "excluded" | "counterexample" | "unknown"
    dual_bound: float
    primal: float
    point: Tensor | None
    detail: str
    reason: str = ""  # for "unknown": see UNKNOWN_REASONS


def _unknown_reason(timed_out: bool, primal: float, has_primal: bool, margin_tol: float) -> str:
    """Why a finished class solve decided nothing (no exclusion, no replayed counterexample)."""
    if timed_out:
        return "timeout"
    if has_primal and primal < -margin_tol:
        return "no_replay"  # a clearly negative solver point that float32 PyTorch does not confirm
    return "within_tolerance"  # the optimum is within the numerical tolerance of 0


def solve_class(milp: _MILP, solver: str, y: int, j: int, time_left: float, margin_tol: float, replay_fn,
                stop_early: bool = True, seed: int = 0) -> _ClassOutcome:
    """Minimize ``z_y - z_j`` over the MILP with ``solver`` (``highs`` or ``scip``); with ``stop_early``
    stop once the dual bound exceeds ``margin_tol`` or a point with negative margin replays
    (``replay_fn(x_flat) -> Tensor | None``)."""
    if solver == "highs":
        return _solve_class(milp.highs(seed=seed), milp, y, j, time_left, margin_tol, replay_fn, stop_early)
    if solver == "scip":
        return _solve_class_scip(milp, y, j, time_left, margin_tol, replay_fn, stop_early, seed)
    raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")


def _solve_class_scip(milp: _MILP, y: int, j: int, time_left: float, margin_tol: float, replay_fn,
                      stop_early: bool = True, seed: int = 0) -> _ClassOutcome:
    """``solve_class`` with SCIP (``pyscipopt``) on the same encoding, stopped as HiGHS is: an event
    handler replays every improving solution with negative margin, and interrupts the search once a
    replay succeeds or, after any node, SCIP's global dual bound exceeds ``margin_tol``. (No objective
    limit: under one, "infeasible" could not be told apart from numerical trouble, which must give
    ``unknown``; the encoding is never empty in exact arithmetic.)"""
    from pyscipopt import SCIP_EVENTTYPE, Eventhdlr
    from pyscipopt.scip import Expr, Term

    t_build = time.perf_counter()
    model, xs = milp.scip(seed)
    time_left -= time.perf_counter() - t_build  # the time limit covers building the model
    cost, offset = milp.margin_objective(y, j)
    nz = np.flatnonzero(cost)
    model.setObjective(Expr({Term(xs[k]): float(cost[k]) for k in nz.tolist()}), "minimize")
    model.addObjoffset(offset)
    model.setParam("limits/time", max(float(time_left), 1e-3))
    inputs = xs[:milp.n_input]
    state = {"point": None, "tried": 0, "dual": -math.inf}
    node_events = SCIP_EVENTTYPE.NODEFEASIBLE | SCIP_EVENTTYPE.NODEINFEASIBLE | SCIP_EVENTTYPE.NODEBRANCHED

    class _Replay(Eventhdlr):
        def eventinit(self) -> None:
            self.model.catchEvent(SCIP_EVENTTYPE.BESTSOLFOUND, self)
            self.model.catchEvent(node_events, self)

        def eventexit(self) -> None:
            self.model.dropEvent(SCIP_EVENTTYPE.BESTSOLFOUND, self)
            self.model.dropEvent(node_events, self)

        def eventexec(self, event) -> None:
            if event.getType() == SCIP_EVENTTYPE.BESTSOLFOUND:
                sol = self.model.getBestSol()
                if self.model.getSolObjVal(sol) < 0 and state["point"] is None and state["tried"] < 50:
                    state["tried"] += 1
                    state["point"] = replay_fn(np.array([self.model.getSolVal(sol, v) for v in inputs]))
                    if state["point"] is not None and stop_early:
                        self.model.interruptSolve()
                return
            dual = self.model.getDualbound()
            state["dual"] = max(state["dual"], dual)
            if stop_early and dual > margin_tol:
                self.model.interruptSolve()

    model.includeEventhdlr(_Replay(), "replay", "replays improving solutions in float32 PyTorch")
    model.optimize()
    status = model.getStatus()
    has_primal = model.getNSols() > 0
    primal = float(model.getPrimalbound()) if has_primal else math.inf
    dual = max(float(model.getDualbound()), state["dual"])
    if abs(dual) >= 1e19:
        dual = math.copysign(math.inf, dual)
    if state["point"] is not None:
        return _ClassOutcome("counterexample", dual, primal, state["point"], f"class {j}: replayed")
    if status in ("infeasible", "inforunbd"):
        # The box and the encoding are never empty in exact arithmetic: numerical trouble.
        return _ClassOutcome("unknown", dual, primal, None, f"class {j}: SCIP reports infeasible", "solver_infeasible")
    if status in ("optimal", "timelimit", "userinterrupt", "gaplimit") and dual > margin_tol:
        return _ClassOutcome("excluded", dual, primal, None, f"class {j}: dual bound {dual:.4g}")
    if primal < 0 and has_primal:
        sol = model.getBestSol()
        point = replay_fn(np.array([model.getSolVal(sol, v) for v in inputs]))
        if point is not None:
            return _ClassOutcome("counterexample", dual, primal, point, f"class {j}: replayed")
    if status not in ("optimal", "timelimit", "userinterrupt", "gaplimit"):
        return _ClassOutcome("unknown", dual, primal, None, f"class {j}: SCIP status {status}", "solver_status")
    reason = _unknown_reason(status == "timelimit", primal, has_primal, margin_tol)
    return _ClassOutcome("unknown", dual, primal, None,
                         f"class {j}: SCIP {status}, dual bound {dual:.4g}, margin {primal:.3g}", reason)


def _solve_class(h, milp: _MILP, y: int, j: int, time_left: float, margin_tol: float, replay_fn,
                 stop_early: bool = True) -> _ClassOutcome:
    """``solve_class`` with HiGHS: minimize ``z_y - z_j``; stop once the dual bound exceeds
    ``margin_tol`` or a point with negative margin replays (``replay_fn(x_flat) -> Tensor | None``)."""
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
        elif time.perf_counter() > deadline:
            state["timed_out"] = True
            e.interrupt()

    def on_simplex(e) -> None:  # HiGHS checks its own time limit rarely inside large root LPs
        if time.perf_counter() > deadline:
            state["timed_out"] = True
            e.interrupt()

    deadline = time.perf_counter() + max(float(time_left), 1e-3)
    state["timed_out"] = False
    h.cbMipImprovingSolution.subscribe(on_improving)
    h.cbMipInterrupt.subscribe(on_interrupt)
    h.cbSimplexInterrupt.subscribe(on_simplex)
    try:
        h.run()
    finally:
        h.cbMipImprovingSolution.unsubscribe(on_improving)
        h.cbMipInterrupt.unsubscribe(on_interrupt)
        h.cbSimplexInterrupt.unsubscribe(on_simplex)
    status = h.getModelStatus()
    info = h.getInfo()
    name = h.modelStatusToString(status)
    dual = float(info.mip_dual_bound) if status != highspy.HighsModelStatus.kInfeasible else math.inf
    if status == highspy.HighsModelStatus.kInterrupt:
        dual = max(dual, state["dual"]) if math.isfinite(dual) else state["dual"]
    primal = float(info.objective_function_value) if info.primal_solution_status else math.inf
    if not milp.integer.any() and status == highspy.HighsModelStatus.kOptimal:
        dual = primal  # every ReLU stable: an LP, solved by simplex (no MIP dual bound is reported)
    if state["point"] is not None:
        return _ClassOutcome("counterexample", dual, primal, state["point"], f"class {j}: replayed")
    if status == highspy.HighsModelStatus.kInfeasible:
        # The box and the encoding are never empty in exact arithmetic: numerical trouble.
        return _ClassOutcome("unknown", dual, primal, None, f"class {j}: solver reports infeasible",
                             "solver_infeasible")
    finished = (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kInterrupt,
                highspy.HighsModelStatus.kTimeLimit)
    if status in finished and dual > margin_tol:
        return _ClassOutcome("excluded", dual, primal, None, f"class {j}: dual bound {dual:.4g}")
    has_primal = bool(info.primal_solution_status)
    if primal < 0 and has_primal:
        sol = np.array(h.getSolution().col_value[:milp.n_input])
        point = replay_fn(sol)
        if point is not None:
            return _ClassOutcome("counterexample", dual, primal, point, f"class {j}: replayed")
    if status not in finished:
        return _ClassOutcome("unknown", dual, primal, None, f"class {j}: HiGHS status {name}", "solver_status")
    reason = _unknown_reason(status == highspy.HighsModelStatus.kTimeLimit or state["timed_out"], primal,
                             has_primal, margin_tol)
    return _ClassOutcome("unknown", dual, primal, None,
                         f"class {j}: {name}, dual bound {dual:.4g}, margin {primal:.3g}", reason)


# ---------------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------------
def verify_one(model: nn.Module, x: Tensor, y: int, eps: float, norm: str = "linf", time_limit: float = 60.0,
               counterexample: Tensor | None = None, bounds: str = "linear", attack_steps: int = 20,
               solver: str = "highs", margin_atol: float = MARGIN_ATOL, margin_rtol: float = MARGIN_RTOL,
               margin_float32: bool = False, seed: int = 0, encoder: MILPEncoder | None = None) -> VerifyResult:
    """Verify one example ``x`` (per-example shape, no batch dimension); see ``verify``."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    net = to_sequential(model)
    xb, yb = x.unsqueeze(0).float(), torch.tensor([int(y)])
    tol, unstable, stable = math.nan, 0, 0

    def result(verdict, ce, unstable, stable, method, detail, margin=math.nan, reason="") -> VerifyResult:
        return VerifyResult(verdict, time.perf_counter() - t0, ce, unstable, stable, method, detail,
                            float(margin), float(tol), reason)

    with torch.no_grad():
        if bool(replays(model, xb, xb, yb, eps, norm)[0]):
            return result("falsified", x.clone(), 0, 0, "attack", "clean example misclassified")
        if counterexample is not None:
            ce = counterexample.reshape(xb.shape).float()
            if bool(replays(model, ce, xb, yb, eps, norm, rtol=REPLAY_RTOL)[0]):
                return result("falsified", ce[0].clone(), 0, 0, "attack", "given counterexample replays")
        lower, upper = input_box(xb.double(), eps, norm)
        m, act = margin_lower_bounds(net, lower, upper, yb, bounds)
        tol = float(margin_tolerance(net, lower, upper, act, margin_atol, margin_rtol, margin_float32).tol[0])
        relus = [i for i, layer in enumerate(net) if isinstance(layer, nn.ReLU)]
        unstable = sum(int(((act[i][0] < 0) & (act[i][1] > 0)).sum()) for i in relus)
        stable = sum(act[i][0].numel() for i in relus) - unstable
        m = m[0]
        if bool((m > tol).all()):
            return result("verified", None, unstable, stable, "bounds",
                          f"{bounds} bounds: min margin >= {float(m.min()):.4g} > tol {tol:.3g}", float(m.min()))
    if attack_steps > 0 and norm == "linf" and eps > 0:
        gen = torch.Generator().manual_seed(seed)
        threat = ThreatModel(norm, eps)
        start = threat.random_start(xb, gen)
        with torch.enable_grad():
            x_adv = ascend(model, xb, lambda z: margin_loss(z, yb), threat, attack_steps, start=start)
        if bool(replays(model, x_adv, xb, yb, eps, norm)[0]):
            return result("falsified", x_adv[0], unstable, stable, "attack", f"PGD-{attack_steps} (margin loss)")
    if norm != "linf":
        return result("unknown", None, unstable, stable, "bounds",
                      "L2: no MILP (the encoding has no quadratic constraints); bounds inconclusive",
                      reason="l2_no_milp")
    if time.perf_counter() >= deadline:
        return result("unknown", None, unstable, stable, "bounds", "time limit reached before the MILP",
                      reason="timeout")

    x_flat = xb[0]

    def replay_fn(sol: np.ndarray) -> Tensor | None:
        p = _snap_into_ball(sol, x_flat, eps).unsqueeze(0)
        if bool(replays(model, p, xb, yb, eps, norm)[0]):
            return p[0]
        with torch.enable_grad():
            p2 = ascend(model, xb, lambda z: margin_loss(z, yb), ThreatModel("linf", eps), 5, step_size=eps / 20,
                        start=p)
        p2 = _snap_into_ball(p2.double().flatten().numpy(), x_flat, eps).unsqueeze(0)
        return p2[0] if bool(replays(model, p2, xb, yb, eps, norm)[0]) else None

    try:
        enc = encoder if encoder is not None else MILPEncoder(net, tuple(x.shape))
        act_np = {i: (lo[0].flatten().numpy(), hi[0].flatten().numpy()) for i, (lo, hi) in act.items()}
        milp = enc.build(lower[0].flatten().numpy(), upper[0].flatten().numpy(), act_np)
    except (RuntimeError, ValueError, MemoryError) as err:
        return result("unknown", None, unstable, stable, "milp", f"could not build the MILP: {err}",
                      reason="build_error")
    classes = [int(j) for j in torch.argsort(m) if int(j) != int(y) and float(m[j]) <= tol]
    proven = [float(m[j]) for j in range(len(m)) if j != int(y) and j not in classes]  # excluded by the bounds
    details = []
    for j in classes:
        left = deadline - time.perf_counter()
        if left <= 0:
            return result("unknown", None, milp.unstable, milp.stable, "milp",
                          f"time limit ({time_limit:g} s); " + "; ".join(details), reason="timeout")
        try:
            # a fresh solver per class: HiGHS keeps a user interrupt across runs
            out = solve_class(milp, solver, int(y), j, left, tol, replay_fn, seed=seed)
        except ImportError:
            raise
        except Exception as err:  # solver errors are never "verified"
            logger.warning("%s failed on class %d: %s", solver, j, err)
            return result("unknown", None, milp.unstable, milp.stable, "milp", f"{solver} error: {err}",
                          reason="solver_error")
        if out.status == "counterexample":
            return result("falsified", out.point, milp.unstable, milp.stable, "milp", out.detail)
        if out.status != "excluded":
            timeout = out.reason == "timeout" or time.perf_counter() >= deadline - 1e-3
            return result("unknown", None, milp.unstable, milp.stable, "milp",
                          ("time limit: " if timeout else "") + out.detail,
                          reason="timeout" if timeout else out.reason)
        details.append(out.detail)
        proven.append(max(out.dual_bound, float(m[j])))
    return result("verified", None, milp.unstable, milp.stable, "milp",
                  f"{len(classes)} MILPs ({solver}); min proven margin {min(proven):.4g} > tol {tol:.3g}",
                  min(proven))


def _check_inputs(model, x, y, eps, norm, time_limit, processes, bounds, solver="highs", margin_atol=MARGIN_ATOL,
                  margin_rtol=MARGIN_RTOL, shard_size=1):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (time_limit > 0):
        raise ValueError(f"time_limit must be > 0, got {time_limit}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if bounds not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {bounds!r}; expected one of {BOUND_METHODS}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if solver == "scip":
        try:
            import pyscipopt  # noqa: F401
        except ImportError as err:
            raise ValueError("solver 'scip' needs pyscipopt (pip install pyscipopt; it is in pyproject.toml)") from err
    if not (math.isfinite(margin_atol) and math.isfinite(margin_rtol) and margin_atol >= 0 and margin_rtol >= 0):
        raise ValueError(f"margin_atol and margin_rtol must be finite and >= 0, got {margin_atol!r}, {margin_rtol!r}")
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


# ---------------------------------------------------------------------------------------------------
# Shards: results persisted per block of examples, so that an interrupted run resumes
# ---------------------------------------------------------------------------------------------------
def _hash_tensor(h, t: Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def verify_key(model: nn.Module, x: Tensor, y: Tensor, counterexamples: Sequence[Tensor | None],
               settings: dict) -> str:
    """A hash of everything that determines ``verify``'s results: the weights, the examples, the given
    counterexamples and the settings (a shard is reused only by the same computation)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, t)
    _hash_tensor(h, x.float())
    _hash_tensor(h, y.long())
    for c in counterexamples:
        _hash_tensor(h, None if c is None else c.float())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _shard_file(shard_dir: Path, key: str, start: int) -> Path:
    return shard_dir / f"{key[:24]}-{start:07d}.pt"


def _save_shard(path: Path, key: str, start: int, results: Sequence[VerifyResult]) -> None:
    blob = {"key": key, "start": start, "results": [
        {**{k: v for k, v in asdict(r).items() if k != "counterexample"},
         "counterexample": None if r.counterexample is None else r.counterexample.detach().cpu().clone()}
        for r in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # a shard is either complete or absent


def _load_shard(path: Path, key: str, start: int, n: int) -> list[VerifyResult] | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file is recomputed, never trusted
        logger.warning("ignoring unreadable shard %s: %s", path, err)
        return None
    if blob.get("key") != key or blob.get("start") != start or len(blob.get("results", ())) != n:
        return None
    return [VerifyResult(**r) for r in blob["results"]]


def verify(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf", time_limit: float = 60.0,
           processes: int = 1, counterexamples: Tensor | Sequence[Tensor | None] | None = None,
           bounds: str = "linear", attack_steps: int = 20, solver: str = "highs",
           margin_atol: float = MARGIN_ATOL, margin_rtol: float = MARGIN_RTOL, margin_float32: bool = False,
           seed: int = 0, progress: bool = True, shard_dir: str | os.PathLike | None = None,
           shard_size: int = 50) -> list[VerifyResult]:
    """Complete verification (Tjeng et al. 2019) of ``model`` at each ``(x[i], y[i])`` for the
    ``norm`` ball of radius ``eps`` intersected with [0, 1]; one ``VerifyResult`` per example.

    ``model``: robustlib's MLP/SmallCNN/CWCNN or an ``nn.Sequential`` of Normalize/Flatten/Linear/
    Conv2d/ReLU/MaxPool2d (kernel == stride), evaluated in eval mode; ``x`` in [0, 1].
    ``counterexamples``: optional candidate points (e.g. from attacks), replayed first.
    ``bounds``: ``"linear"`` (progressive CROWN) or ``"interval"`` (IBP) for certification and the
    big-M constants. ``attack_steps``: PGD steps tried before the MILP (0 = none). ``solver``:
    ``"highs"`` or ``"scip"`` (the same encoding; options in ``HIGHS_OPTIONS`` / ``SCIP_PARAMS``).
    ``margin_atol``, ``margin_rtol``, ``margin_float32``: the numerical tolerance
    (``bounds.margin_tolerance``) a proven margin must exceed. ``time_limit``: seconds per example,
    whole example. ``processes > 1``: forked workers (``robustlib.pipeline.parallel.imap``), one torch thread
    each.
    ``shard_dir``: results are saved there per block of ``shard_size`` examples as each block
    finishes, under a hash of the whole computation (``verify_key``); a later call with the same
    inputs loads the finished blocks instead of recomputing them (resume after a kill).
    L2: bounds only (the encoding has no quadratic constraints), then ``unknown``.
    """
    net = _check_inputs(model, x, y, eps, norm, time_limit, processes, bounds, solver, margin_atol, margin_rtol,
                        shard_size)
    if counterexamples is not None and len(counterexamples) != len(y):
        raise ValueError(f"counterexamples must have one entry per example ({len(y)}), got {len(counterexamples)}")
    ces = [None] * len(y) if counterexamples is None else [None if c is None else c.detach().cpu()
                                                            for c in counterexamples]
    kw = dict(eps=float(eps), norm=norm, time_limit=float(time_limit), bounds=bounds, attack_steps=int(attack_steps),
              solver=solver, margin_atol=float(margin_atol), margin_rtol=float(margin_rtol),
              margin_float32=bool(margin_float32), seed=int(seed))
    was = model.training
    model.eval()
    try:
        xs, ys = x.detach().cpu().float(), [int(v) for v in y]
        n = len(ys)
        results: list[VerifyResult | None] = [None] * n
        starts = list(range(0, n, shard_size))
        key = ""
        if shard_dir is not None:
            shard_dir = Path(shard_dir)
            key = verify_key(model, xs, y.detach().cpu(), ces, {**kw, "solver_settings": solver_settings(solver)})
            for s in starts:
                e = min(s + shard_size, n)
                loaded = _load_shard(_shard_file(shard_dir, key, s), key, s, e - s)
                if loaded is not None:
                    results[s:e] = loaded
            done = sum(r is not None for r in results)
            if done:
                logger.info("verify: %d of %d examples loaded from shards in %s", done, n, shard_dir)
        todo = [i for i in range(n) if results[i] is None]
        enc = MILPEncoder(net, tuple(x.shape[1:])) if norm == "linf" and todo else None

        def one(i: int) -> tuple[int, VerifyResult]:
            return i, verify_one(model, xs[i], ys[i], counterexample=ces[i], encoder=enc, **kw)

        for i, res in tqdm(parallel.imap(one, todo, processes), total=len(todo), desc="verify",
                           disable=not progress):
            results[i] = res
            if shard_dir is not None:
                s = (i // shard_size) * shard_size
                e = min(s + shard_size, n)
                if all(r is not None for r in results[s:e]) and not _shard_file(shard_dir, key, s).exists():
                    _save_shard(_shard_file(shard_dir, key, s), key, s, results[s:e])
        return [r for r in results if r is not None]
    finally:
        model.train(was)


def solver_settings(solver: str) -> dict:
    """The solver, its version and every option set explicitly (recorded with the results)."""
    if solver == "highs":
        import highspy

        h = highspy.Highs()
        version = h.version() if hasattr(h, "version") else "unknown"
        return {"solver": "highs", "version": version, "options": dict(HIGHS_OPTIONS)}
    if solver == "scip":
        import pyscipopt

        return {"solver": "scip", "version": pyscipopt.__version__,
                "scip_version": str(pyscipopt.Model().version()) if hasattr(pyscipopt.Model, "version") else "",
                "options": dict(SCIP_PARAMS)}
    raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")


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
