"""robustlib.parallel: forked workers return what the same call returns in-process."""

import pytest
import torch

from robustlib.models import build_model
from robustlib.parallel import Background, forked_pool


def _logits_and_threads(model, x):
    return model(x).detach(), torch.get_num_threads()


def _raise():
    raise KeyError("planted")


def test_background_matches_in_process_even_for_models_that_do_not_pickle():
    model = build_model("smallcnn", spectral_norm=True).eval()  # parametrized modules refuse pickling
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    forked, threads = Background(_logits_and_threads, model, x).result()
    local, _ = Background(_logits_and_threads, model, x, enabled=False).result()
    assert torch.equal(forked, local) and threads == 1  # workers run one torch thread
    with pytest.raises(KeyError, match="planted"):
        Background(_raise).result()
    with pytest.raises(ValueError, match="processes"):
        forked_pool(0)
