"""Training schedules as functions of progress (the fraction of training done, in [0, 1]).

The paper's appendix A (CIFAR-10, 100 epochs) expressed as fractions so that it scales to short runs:
learning rate piecewise linear 0 -> 0.1 over 40%, -> 0.005 over the next 40%, -> 0 over the last 20%;
eps ramps from 2/255 to 8/255 (i.e. from 1/4 of eps) over 10%-35%; regularizer weights ramp to 10x over
20%-80% (``robustlib.regularizers.Ramp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PAPER_LR_KNOTS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.4, 1.0), (0.8, 0.05), (1.0, 0.0))


def piecewise_linear(knots: Sequence[Sequence[float]], t: float) -> float:
    """Linear interpolation through ``knots`` = [(t_0, v_0), ...] with increasing t; constant outside."""
    if len(knots) < 1:
        raise ValueError("piecewise_linear needs at least one knot")
    ts = [float(k[0]) for k in knots]
    if any(b < a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"knots must have non-decreasing t, got {ts}")
    if t <= ts[0]:
        return float(knots[0][1])
    for (t0, v0), (t1, v1) in zip(knots, knots[1:], strict=False):
        if t <= t1:
            return float(v1) if t1 == t0 else float(v0) + (t - t0) / (t1 - t0) * (float(v1) - float(v0))
    return float(knots[-1][1])


@dataclass(frozen=True)
class EpsRamp:
    """eps grows linearly from ``initial`` x eps at ``start`` to eps at ``end`` (fractions of training)."""

    start: float = 0.1
    end: float = 0.35
    initial: float = 0.25

    def __post_init__(self) -> None:
        if not (0.0 <= self.start <= self.end <= 1.0) or not (0.0 <= self.initial <= 1.0):
            raise ValueError(f"impossible eps ramp {self}")

    def __call__(self, eps: float, progress: float) -> float:
        return eps * piecewise_linear(((self.start, self.initial), (self.end, 1.0)), progress)

    def fraction(self, progress: float) -> float:
        """How much of the ramp is done at ``progress``: 0 before ``start``, 1 after ``end``."""
        return piecewise_linear(((self.start, 0.0), (self.end, 1.0)), progress)
