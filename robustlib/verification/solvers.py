"""The MILP solvers of the verifier: HiGHS (``highspy``) and, on the same encoding, SCIP (``pyscipopt``)
as an independent second solver.

``solve_class`` minimizes ``z_y - z_j`` over one ``_MILP`` (``robustlib.verification.encoding``). Each
solver has an adapter that only runs it: the model, the objective, the callbacks that replay improving
solutions with negative margin in float32 PyTorch and stop the search early (``_Search``, shared), and
a solver-neutral account of how the run ended (``_RunEnd``). The verdict on the class is decided in one
place for both solvers, ``_decide``: excluded (the dual bound exceeds the margin tolerance after a
finished search), counterexample (a solver point that replays; a point that does not replay never
counts) or unknown with its reason (``_unknown_reason``: the time limit, a margin within the tolerance,
a negative point that does not replay, solver trouble).

Every solver option that affects the result is set explicitly (``HIGHS_OPTIONS``, ``SCIP_PARAMS``) and
recorded with the results (``solver_settings``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from robustlib.verification.encoding import _MILP

logger = logging.getLogger(__name__)

__all__ = ["SOLVERS", "HIGHS_OPTIONS", "SCIP_PARAMS", "solve_class", "solver_settings", "require_solver"]

SOLVERS = ("highs", "scip")
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
_MAX_REPLAYS = 50
"""Improving solutions with negative margin replayed per class, at most (each replay may run a short PGD)."""
_SCIP_FINISHED = ("optimal", "timelimit", "userinterrupt", "gaplimit")


def _highspy():
    # Lazy import of the optional solver dependency highspy (HiGHS's compiled extension): only a solve or
    # solver_settings("highs") needs it, so SOLVERS and the option tables (read by the parameter checks of
    # robustlib.pipeline.params) import without it, as they did before the verifier was split into modules.
    import highspy

    return highspy


def _pyscipopt():
    # Lazy import of the optional solver dependency pyscipopt (SCIP's compiled extension): HiGHS runs and
    # everything else work without it; verify() checks for it only when solver="scip" (require_solver).
    import pyscipopt

    return pyscipopt


def require_solver(solver: str) -> None:
    """``ValueError`` unless ``solver`` is one of ``SOLVERS`` and its package imports."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if solver == "scip":
        try:
            _pyscipopt()
        except ImportError as err:
            raise ValueError("solver 'scip' needs pyscipopt (pip install pyscipopt; it is in pyproject.toml)") from err


def solver_settings(solver: str) -> dict:
    """The solver, its version and every option set explicitly (recorded with the results)."""
    if solver == "highs":
        h = _highspy().Highs()
        version = h.version() if hasattr(h, "version") else "unknown"
        return {"solver": "highs", "version": version, "options": dict(HIGHS_OPTIONS)}
    if solver == "scip":
        pyscipopt = _pyscipopt()
        return {"solver": "scip", "version": pyscipopt.__version__,
                "scip_version": str(pyscipopt.Model().version()) if hasattr(pyscipopt.Model, "version") else "",
                "options": dict(SCIP_PARAMS)}
    raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")


# ---------------------------------------------------------------------------------------------------
# The shared part: the search state the callbacks update, and the verdict on a class
# ---------------------------------------------------------------------------------------------------
@dataclass
class _ClassOutcome:
    status: str  # "excluded" | "counterexample" | "unknown"
    dual_bound: float
    primal: float
    point: Tensor | None
    detail: str
    reason: str = ""  # for "unknown": see robustlib.verification.cascade.UNKNOWN_REASONS


@dataclass
class _Search:
    """What a running solve's callbacks share: the replay of improving solutions with negative margin
    (``replay_fn(x_flat) -> Tensor | None``; the first point that replays is kept), the best dual
    bound seen, and whether a callback stopped the search at the deadline."""

    replay_fn: Callable[[np.ndarray], Tensor | None]
    margin_tol: float
    stop_early: bool
    point: Tensor | None = None
    tried: int = 0
    dual: float = -math.inf
    timed_out: bool = False

    def offer(self, objective: float, inputs: Callable[[], np.ndarray]) -> bool:
        """An improving solution of margin ``objective`` (``inputs()``: its input part): replayed when
        the margin is negative, no point has replayed yet and fewer than ``_MAX_REPLAYS`` were tried.
        True when this one replayed."""
        if objective < 0 and self.point is None and self.tried < _MAX_REPLAYS:
            self.tried += 1
            self.point = self.replay_fn(inputs())
            return self.point is not None
        return False

    def note_dual(self, dual: float) -> bool:
        """Record a dual bound; True when it ends the search (``stop_early`` and above the tolerance)."""
        self.dual = max(self.dual, dual)
        return self.stop_early and dual > self.margin_tol


@dataclass
class _RunEnd:
    """How a solve ended, in solver-neutral terms (each adapter translates its solver's status). The
    three texts are the solver's words in the outcome's ``detail`` (recorded per example)."""

    finished: bool  # optimal, or stopped by the time limit, an interrupt or the gap: the dual bound holds
    infeasible: bool  # reported infeasible: numerical trouble (the encoding is never empty)
    timed_out: bool
    dual: float
    primal: float
    has_primal: bool
    incumbent: Callable[[], np.ndarray]  # the input part of the best solution found
    status_label: str  # how the detail of an undecided finished search names the status
    unfinished_detail: str  # the detail when the search did not finish
    infeasible_detail: str  # the detail when the solver reports infeasible


def _unknown_reason(timed_out: bool, primal: float, has_primal: bool, margin_tol: float) -> str:
    """Why a finished class solve decided nothing (no exclusion, no replayed counterexample)."""
    if timed_out:
        return "timeout"
    if has_primal and primal < -margin_tol:
        return "no_replay"  # a clearly negative solver point that float32 PyTorch does not confirm
    return "within_tolerance"  # the optimum is within the numerical tolerance of 0


def _decide(end: _RunEnd, search: _Search, j: int) -> _ClassOutcome:
    """The verdict on class ``j``, the same for every solver: a point that replayed during the search,
    or the final incumbent if its margin is negative and it replays -> ``counterexample``; a finished
    search whose dual bound exceeds the margin tolerance -> ``excluded``; otherwise ``unknown``, with
    the reason (solver infeasible, unfinished status, or ``_unknown_reason``)."""
    dual, primal = end.dual, end.primal
    if search.point is not None:
        return _ClassOutcome("counterexample", dual, primal, search.point, f"class {j}: replayed")
    if end.infeasible:
        # The box and the encoding are never empty in exact arithmetic: numerical trouble.
        return _ClassOutcome("unknown", dual, primal, None, f"class {j}: {end.infeasible_detail}", "solver_infeasible")
    if end.finished and dual > search.margin_tol:
        return _ClassOutcome("excluded", dual, primal, None, f"class {j}: dual bound {dual:.4g}")
    if primal < 0 and end.has_primal:
        point = search.replay_fn(end.incumbent())
        if point is not None:
            return _ClassOutcome("counterexample", dual, primal, point, f"class {j}: replayed")
    if not end.finished:
        return _ClassOutcome("unknown", dual, primal, None, f"class {j}: {end.unfinished_detail}", "solver_status")
    reason = _unknown_reason(end.timed_out, primal, end.has_primal, search.margin_tol)
    return _ClassOutcome("unknown", dual, primal, None,
                         f"class {j}: {end.status_label}, dual bound {dual:.4g}, margin {primal:.3g}", reason)


def solve_class(milp: _MILP, solver: str, y: int, j: int, time_left: float, margin_tol: float, replay_fn,
                stop_early: bool = True, seed: int = 0) -> _ClassOutcome:
    """Minimize ``z_y - z_j`` over the MILP with ``solver`` (``highs`` or ``scip``); with ``stop_early``
    stop once the dual bound exceeds ``margin_tol`` or a point with negative margin replays
    (``replay_fn(x_flat) -> Tensor | None``)."""
    search = _Search(replay_fn, margin_tol, stop_early)
    if solver == "highs":
        return _decide(_run_highs(milp, y, j, time_left, search, seed), search, j)
    if solver == "scip":
        return _decide(_run_scip(milp, y, j, time_left, search, seed), search, j)
    raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")


# ---------------------------------------------------------------------------------------------------
# HiGHS
# ---------------------------------------------------------------------------------------------------
def _highs_model(milp: _MILP, threads: int = 1, seed: int = 0):
    """A ``highspy.Highs`` instance holding the constraints (objective set per class), with the
    options of ``HIGHS_OPTIONS`` set explicitly."""
    highspy = _highspy()
    h = highspy.Highs()
    h.silent()
    h.setOptionValue("output_flag", False)
    for key, value in HIGHS_OPTIONS.items():
        h.setOptionValue(key, value)
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("random_seed", int(seed))
    lp = highspy.HighsLp()
    n = milp.col_lo.size
    lp.num_col_, lp.num_row_ = n, milp.A.shape[0]
    lp.col_cost_ = np.zeros(n)
    lp.col_lower_, lp.col_upper_ = milp.col_lo, milp.col_hi
    lp.row_lower_, lp.row_upper_ = milp.row_lo, milp.row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, milp.A.shape[0]
    lp.a_matrix_.start_ = milp.A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = milp.A.indices.astype(np.int32)
    lp.a_matrix_.value_ = milp.A.data
    lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                       for b in milp.integer]
    status = h.passModel(lp)
    if status == highspy.HighsStatus.kWarning:
        logger.debug("HiGHS accepted the model with a warning (e.g. tiny coefficients dropped)")
    elif status != highspy.HighsStatus.kOk:
        raise RuntimeError(f"HiGHS rejected the model: {status}")
    return h


def _run_highs(milp: _MILP, y: int, j: int, time_left: float, search: _Search, seed: int) -> _RunEnd:
    """Minimize ``z_y - z_j`` with a fresh HiGHS instance (HiGHS keeps a user interrupt across runs);
    callbacks replay improving solutions and stop at the deadline, which HiGHS itself checks rarely
    inside large root LPs."""
    h = _highs_model(milp, seed=seed)
    cost, offset = milp.margin_objective(y, j)
    h.changeColsCost(len(cost), np.arange(len(cost), dtype=np.int32), cost)
    h.changeObjectiveOffset(offset)
    h.setOptionValue("time_limit", max(float(time_left), 1e-3))

    def on_improving(e) -> None:
        search.offer(e.data_out.objective_function_value, lambda: np.array(e.data_out.mip_solution[:milp.n_input]))

    def on_interrupt(e) -> None:
        if search.note_dual(e.data_out.mip_dual_bound) or (search.stop_early and search.point is not None):
            e.interrupt()
        elif time.perf_counter() > deadline:
            search.timed_out = True
            e.interrupt()

    def on_simplex(e) -> None:
        if time.perf_counter() > deadline:
            search.timed_out = True
            e.interrupt()

    deadline = time.perf_counter() + max(float(time_left), 1e-3)
    h.cbMipImprovingSolution.subscribe(on_improving)
    h.cbMipInterrupt.subscribe(on_interrupt)
    h.cbSimplexInterrupt.subscribe(on_simplex)
    try:
        h.run()
    finally:
        h.cbMipImprovingSolution.unsubscribe(on_improving)
        h.cbMipInterrupt.unsubscribe(on_interrupt)
        h.cbSimplexInterrupt.unsubscribe(on_simplex)
    return _highs_end(h, milp, search)


def _highs_end(h, milp: _MILP, search: _Search) -> _RunEnd:
    """HiGHS's status, dual bound (merged with the callbacks' on an interrupt) and incumbent."""
    S = _highspy().HighsModelStatus
    status = h.getModelStatus()
    info = h.getInfo()
    name = h.modelStatusToString(status)
    dual = float(info.mip_dual_bound) if status != S.kInfeasible else math.inf
    if status == S.kInterrupt:
        dual = max(dual, search.dual) if math.isfinite(dual) else search.dual
    primal = float(info.objective_function_value) if info.primal_solution_status else math.inf
    if not milp.integer.any() and status == S.kOptimal:
        dual = primal  # every ReLU stable: an LP, solved by simplex (no MIP dual bound is reported)
    return _RunEnd(finished=status in (S.kOptimal, S.kInterrupt, S.kTimeLimit), infeasible=status == S.kInfeasible,
                   timed_out=status == S.kTimeLimit or search.timed_out, dual=dual, primal=primal,
                   has_primal=bool(info.primal_solution_status),
                   incumbent=lambda: np.array(h.getSolution().col_value[:milp.n_input]),
                   status_label=name, unfinished_detail=f"HiGHS status {name}",
                   infeasible_detail="solver reports infeasible")


# ---------------------------------------------------------------------------------------------------
# SCIP
# ---------------------------------------------------------------------------------------------------
def _scip_model(milp: _MILP, seed: int = 0):
    """A ``pyscipopt.Model`` holding the same variables, bounds, integrality and rows (``row_lo <=
    A v <= row_hi``) as ``_highs_model``, with ``SCIP_PARAMS`` set explicitly; returns ``(model, vars)``."""
    scip = _pyscipopt().scip
    model = scip.Model()
    model.hideOutput()
    for key, value in SCIP_PARAMS.items():
        model.setParam(key, value)
    model.setParam("randomization/randomseedshift", int(seed))
    inf = model.infinity()
    xs = [model.addVar(name=f"v{k}", vtype="B" if integ and lo >= 0 and hi <= 1 else ("I" if integ else "C"),
                       lb=None if lo == -np.inf else float(lo), ub=None if hi == np.inf else float(hi))
          for k, (lo, hi, integ) in enumerate(zip(milp.col_lo.tolist(), milp.col_hi.tolist(),
                                                  milp.integer.tolist(), strict=True))]
    terms = [scip.Term(v) for v in xs]
    A = milp.A
    for r in range(A.shape[0]):
        a, b = A.indptr[r], A.indptr[r + 1]
        expr = scip.Expr(dict(zip([terms[k] for k in A.indices[a:b].tolist()], A.data[a:b].tolist(), strict=True)))
        lo, hi = float(milp.row_lo[r]), float(milp.row_hi[r])
        model.addCons(scip.ExprCons(expr, lhs=None if lo <= -inf else lo, rhs=None if hi >= inf else hi),
                      name=f"r{r}")
    return model, xs


def _scip_inputs(model, sol, inputs: list) -> np.ndarray:
    return np.array([model.getSolVal(sol, v) for v in inputs])


def _scip_replay_handler(search: _Search, inputs: list):
    """A SCIP event handler that replays every improving solution with negative margin, and interrupts
    the search once a replay succeeds or, after any node, SCIP's global dual bound exceeds the tolerance
    (``stop_early``)."""
    pyscipopt = _pyscipopt()
    ev = pyscipopt.SCIP_EVENTTYPE
    node_events = ev.NODEFEASIBLE | ev.NODEINFEASIBLE | ev.NODEBRANCHED

    class _Replay(pyscipopt.Eventhdlr):
        def eventinit(self) -> None:
            self.model.catchEvent(ev.BESTSOLFOUND, self)
            self.model.catchEvent(node_events, self)

        def eventexit(self) -> None:
            self.model.dropEvent(ev.BESTSOLFOUND, self)
            self.model.dropEvent(node_events, self)

        def eventexec(self, event) -> None:
            if event.getType() == ev.BESTSOLFOUND:
                sol = self.model.getBestSol()
                if search.offer(self.model.getSolObjVal(sol), lambda: _scip_inputs(self.model, sol, inputs)) \
                        and search.stop_early:
                    self.model.interruptSolve()
                return
            if search.note_dual(self.model.getDualbound()):
                self.model.interruptSolve()

    return _Replay()


def _run_scip(milp: _MILP, y: int, j: int, time_left: float, search: _Search, seed: int) -> _RunEnd:
    """Minimize ``z_y - z_j`` with SCIP on the same encoding, stopped as HiGHS is (an event handler). No
    objective limit: under one, "infeasible" could not be told apart from numerical trouble, which must
    give ``unknown``; the encoding is never empty in exact arithmetic."""
    scip = _pyscipopt().scip
    t_build = time.perf_counter()
    model, xs = _scip_model(milp, seed)
    time_left -= time.perf_counter() - t_build  # the time limit covers building the model
    cost, offset = milp.margin_objective(y, j)
    nz = np.flatnonzero(cost)
    model.setObjective(scip.Expr({scip.Term(xs[k]): float(cost[k]) for k in nz.tolist()}), "minimize")
    model.addObjoffset(offset)
    model.setParam("limits/time", max(float(time_left), 1e-3))
    inputs = xs[:milp.n_input]
    model.includeEventhdlr(_scip_replay_handler(search, inputs), "replay",
                           "replays improving solutions in float32 PyTorch")
    model.optimize()
    status = model.getStatus()
    has_primal = model.getNSols() > 0
    primal = float(model.getPrimalbound()) if has_primal else math.inf
    dual = max(float(model.getDualbound()), search.dual)
    if abs(dual) >= 1e19:
        dual = math.copysign(math.inf, dual)
    return _RunEnd(finished=status in _SCIP_FINISHED, infeasible=status in ("infeasible", "inforunbd"),
                   timed_out=status == "timelimit", dual=dual, primal=primal, has_primal=has_primal,
                   incumbent=lambda: _scip_inputs(model, model.getBestSol(), inputs),
                   status_label=f"SCIP {status}", unfinished_detail=f"SCIP status {status}",
                   infeasible_detail="SCIP reports infeasible")
