"""MIPVerify's MILP encoding of a ReLU network over an input box (Tjeng et al. 2019, "Evaluating
Robustness of Neural Networks with Mixed Integer Programming", section 4).

The exact network on the box: each unstable ReLU gets a binary and big-M constraints from the computed
bounds of its input (Tjeng et al., eq. 5); stable ReLUs are fixed (active = identity, inactive = 0);
MaxPool2d is encoded exactly (one binary per window candidate). Consecutive affine layers become one
sparse float64 matrix, found once per network (``MILPEncoder``); ``MILPEncoder.build`` assembles the
MILP for one box as a solver-neutral ``_MILP`` (``robustlib.verification.solvers`` hands it to HiGHS
or SCIP). Bounds are padded before use as big-M constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from robustlib.bounds.layers import _affine, _pool_args, affine_linear_part

__all__ = ["MILPEncoder"]


@dataclass
class _MILP:
    """The MILP of one input box, solver-neutral: variables ``v`` (the flat input first, ``n_input`` of
    them) with bounds ``col_lo <= v <= col_hi`` and ``integer`` flags, rows ``row_lo <= A v <= row_hi``,
    and the logits as ``P_out v + q_out``; ``unstable`` / ``stable`` count the ReLUs (and max-pool
    windows with several candidates, counted as unstable) the encoding saw."""

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

    def margin_objective(self, y: int, j: int) -> tuple[np.ndarray, float]:
        """``z_y - z_j`` as ``(cost, offset)``: ``cost . v + offset``."""
        row = self.P_out[y] - self.P_out[j]
        return np.asarray(row.todense()).ravel(), float(self.q_out[y] - self.q_out[j])


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
