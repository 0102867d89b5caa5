"""robustlib.data.neighbours (the paper's appendix-B statistics) against brute force on small data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustlib.data.neighbours import (
    ball_l2_radius,
    nearest_other_distances,
    neighbour_stats,
    sample_indices,
)
from robustlib.threat import ThreatModel


def points(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 5, 5, generator=g)
    x[7] = x[3]  # an exact duplicate: its nearest OTHER point is at distance 0
    x[50] = x[10] + 1e-3  # a near-duplicate pair
    return x


def brute_force(x, query):
    flat = x.reshape(x.shape[0], -1).double().numpy()
    out_d, out_j = [], []
    for i in query.tolist():
        d = [math.sqrt(((flat[i] - flat[j]) ** 2).sum()) if j != i else math.inf for j in range(len(flat))]
        out_d.append(min(d))
        out_j.append(int(np.argmin(d)))
    return np.array(out_d), np.array(out_j)


@pytest.mark.parametrize("chunk_size,refine", [(512, 8), (7, 1), (16, 3)])
def test_nearest_other_distances_match_brute_force(chunk_size, refine):
    x = points()
    query = torch.arange(0, 120, 3)
    query = torch.cat([query, torch.tensor([7, 50])])
    d, j = nearest_other_distances(x, query, chunk_size=chunk_size, refine=refine)
    ref_d, ref_j = brute_force(x, query)
    assert np.allclose(d.numpy(), ref_d, rtol=1e-9, atol=1e-6)
    # the neighbour found is at the brute-force distance (ties may pick another index)
    flat = x.reshape(120, -1).double()
    assert torch.allclose((flat[query] - flat[j]).norm(dim=1), torch.from_numpy(ref_d), atol=1e-6)
    assert float(d[query.tolist().index(7)]) == 0.0
    assert (j != query).all()


def test_neighbour_stats_match_brute_force_statistics():
    x = points()
    tm = ThreatModel("linf", 0.08)
    stats = neighbour_stats(x, tm, fraction=0.25, seed=3, chunk_size=10, progress=False)
    query = sample_indices(120, 0.25, 3)
    assert query.numel() == 30 and len(set(query.tolist())) == 30
    ref_d, _ = brute_force(x, query)
    r = 0.08 * math.sqrt(25)
    assert stats.n_sampled == 30 and stats.n_train == 120
    assert stats.mean == pytest.approx(ref_d.mean(), rel=1e-9)
    assert stats.median == pytest.approx(np.median(ref_d), rel=1e-9)
    assert stats.p10 == pytest.approx(np.percentile(ref_d, 10), rel=1e-9)
    assert stats.ball_radius_l2 == pytest.approx(r)
    assert stats.fraction_closer_than_2r == pytest.approx(np.mean(ref_d < 2 * r))
    assert 0 < stats.fraction_closer_than_2r < 1  # the threshold is inside the distribution here


def test_sampling_is_seeded_and_radius_follows_the_norm():
    assert torch.equal(sample_indices(1000, 0.2, 5), sample_indices(1000, 0.2, 5))
    assert not torch.equal(sample_indices(1000, 0.2, 5), sample_indices(1000, 0.2, 6))
    assert sample_indices(1000, 0.2, 5).numel() == 200
    assert ball_l2_radius(ThreatModel("linf", 0.1), 784) == pytest.approx(2.8)
    assert ball_l2_radius(ThreatModel("l2", 1.5), 784) == 1.5


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="fraction"):
        sample_indices(10, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        nearest_other_distances(torch.rand(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="query indices"):
        nearest_other_distances(torch.rand(4, 3), torch.tensor([4]))
