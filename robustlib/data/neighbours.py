"""Nearest-neighbour statistics of a training set (Jin & Rinard, appendix B).

The sparsification argument of the paper needs training points to be far apart compared with the
perturbation ball. For a seeded random ``fraction`` of the training points we compute the L2 distance
to the nearest OTHER training point (another index: an exact duplicate counts as distance 0) and
report its mean, median and 10th percentile, and the fraction of sampled points whose nearest
neighbour is closer than twice the L2 radius of the ball (``eps * sqrt(d)`` for an L-inf ball of
radius eps, ``eps`` for an L2 ball): only for those can the two balls intersect.

Distances are computed in chunks with ``torch.cdist`` (matrix-multiply form), then the best
``refine`` candidates of each query are recomputed exactly, so the float32 cancellation of the fast
form cannot pick a wrong neighbour by more than its own rounding.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)


def ball_l2_radius(threat: ThreatModel, dim: int) -> float:
    """L2 radius of the threat ball in ``dim`` dimensions: eps (L2) or eps * sqrt(dim) (L-inf)."""
    return threat.eps if threat.norm == "l2" else threat.eps * math.sqrt(dim)


def nearest_other_distances(x: torch.Tensor, query: torch.Tensor, chunk_size: int = 512, refine: int = 8,
                            progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """For each index in ``query``, the L2 distance from ``x[i]`` to the nearest ``x[j]``, ``j != i``,
    and that ``j``. ``x``: (N, ...) with N >= 2; returns float64 distances and int64 indices."""
    flat = x.reshape(x.shape[0], -1).float()
    n = flat.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 points, got {n}")
    query = torch.as_tensor(query, dtype=torch.long)
    if query.numel() and (int(query.min()) < 0 or int(query.max()) >= n):
        raise ValueError(f"query indices must lie in [0, {n})")
    if chunk_size < 1 or refine < 1:
        raise ValueError(f"chunk_size and refine must be >= 1, got {chunk_size}, {refine}")
    k = min(refine, n - 1)
    dists = torch.empty(query.numel(), dtype=torch.float64)
    index = torch.empty(query.numel(), dtype=torch.long)
    starts = range(0, query.numel(), chunk_size)
    for s in tqdm(starts, desc="nearest neighbours", disable=not progress, leave=False):
        qi = query[s:s + chunk_size]
        q = flat[qi]
        d = torch.cdist(q, flat)  # (c, N), mm-based for large inputs
        d[torch.arange(qi.numel()), qi] = float("inf")  # not itself
        cand = d.topk(k, dim=1, largest=False).indices  # (c, k)
        exact = (flat[cand].double() - q.double()[:, None, :]).pow(2).sum(-1)  # (c, k)
        best = exact.argmin(1)
        dists[s:s + chunk_size] = exact.gather(1, best[:, None]).squeeze(1).sqrt()
        index[s:s + chunk_size] = cand.gather(1, best[:, None]).squeeze(1)
    return dists, index


@dataclass(frozen=True)
class NeighbourStats:
    """Appendix-B statistics of nearest-neighbour L2 distances."""

    n_train: int
    n_sampled: int
    mean: float
    median: float
    p10: float
    norm: str
    eps: float
    ball_radius_l2: float
    fraction_closer_than_2r: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def sample_indices(n: int, fraction: float = 0.2, seed: int = 0) -> torch.Tensor:
    """A seeded random subset of ``round(fraction * n)`` (at least 1) indices of ``range(n)``, sorted."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    m = max(1, round(fraction * n))
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen)[:m].sort().values


def summarize(distances: torch.Tensor, n_train: int, threat: ThreatModel, dim: int) -> NeighbourStats:
    """Mean, median, 10th percentile of ``distances`` and the fraction below twice the ball's L2 radius."""
    if distances.numel() == 0:
        raise ValueError("no distances to summarize")
    d = distances.double()
    r = ball_l2_radius(threat, dim)
    return NeighbourStats(
        n_train=int(n_train), n_sampled=int(d.numel()), mean=float(d.mean()),
        median=float(d.quantile(0.5)), p10=float(d.quantile(0.1)), norm=threat.norm, eps=float(threat.eps),
        ball_radius_l2=float(r), fraction_closer_than_2r=float((d < 2 * r).double().mean()),
    )


def neighbour_stats(x: torch.Tensor, threat: ThreatModel, fraction: float = 0.2, seed: int = 0,
                    chunk_size: int = 512, progress: bool = True) -> NeighbourStats:
    """Appendix-B statistics for a seeded ``fraction`` of the training images ``x`` (N, ...) in [0, 1]."""
    if x.dim() < 2:
        raise ValueError(f"x must be (N, ...), got shape {tuple(x.shape)}")
    query = sample_indices(x.shape[0], fraction, seed)
    logger.info("nearest neighbours of %d of %d points", query.numel(), x.shape[0])
    dists, _ = nearest_other_distances(x, query, chunk_size, progress=progress)
    return summarize(dists, x.shape[0], threat, x[0].numel())
