"""robustlib.pipeline.parallel: forked workers return what the same call returns in-process."""

import pytest
import torch

from robustlib.models import build_model
from robustlib.pipeline.parallel import Background, forked_pool, imap


def _logits_and_threads(model, x):
    return model(x).detach(), torch.get_num_threads()


def _raise():
    raise KeyError("planted")


def test_background_matches_in_process_even_for_models_that_do_not_pickle():
    model = build_model("smallcnn", spectral_norm=True).eval()  # parametrized modules refuse pickling
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    forked, threads = Background(_logits_and_threads, model, x).result()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same summation order as the one-thread worker
    try:
        local, _ = Background(_logits_and_threads, model, x, enabled=False).result()
    finally:
        torch.set_num_threads(before)
    assert torch.equal(forked, local) and threads == 1  # workers run one torch thread
    with pytest.raises(KeyError, match="planted"):
        Background(_raise).result()
    with pytest.raises(ValueError, match="processes"):
        forked_pool(0)


def test_imap_keeps_order_and_inherits_closures():
    model = build_model("smallcnn", spectral_norm=True).eval()  # does not pickle: inherited through the fork
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def one(i):
        return i, model(x[i:i + 1]).detach(), torch.get_num_threads()

    forked = list(imap(one, range(5), processes=2))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = list(imap(one, range(5), processes=1))
    finally:
        torch.set_num_threads(before)
    assert [f[0] for f in forked] == list(range(5))
    assert all(torch.equal(f[1], v[1]) and f[2] == 1 for f, v in zip(forked, local, strict=True))
    with pytest.raises(ValueError, match="processes"):
        list(imap(one, range(2), processes=0))
