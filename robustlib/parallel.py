"""Forked CPU worker processes (one torch thread each) for evaluations bound by Python overhead.

Two such jobs side by side use both cores of a small machine where one job cannot. Fork (not spawn)
keeps start-up cheap and lets workers inherit models and data; it is only used for CPU tensors.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from multiprocessing.pool import Pool
from typing import Any

import torch

from robustlib.attacks.common import check_count


def forked_pool(processes: int) -> Pool:
    """A pool of ``processes`` forked workers, each limited to one torch thread."""
    processes = check_count("processes", processes, 1)
    return mp.get_context("fork").Pool(processes, initializer=torch.set_num_threads, initargs=(1,))


_INHERITED: dict[int, tuple[Callable[..., Any], tuple, dict]] = {}  # calls forked workers inherit


def _call_inherited(key: int) -> Any:
    fn, args, kwargs = _INHERITED[key]
    return fn(*args, **kwargs)


class Background:
    """``fn(*args, **kwargs)`` computed in one forked worker while the caller goes on (``enabled=False``:
    computed when ``result()`` is called, in this process). ``result()`` returns its value or re-raises
    its exception. The worker inherits ``fn`` and its arguments through the fork (nothing is pickled
    on the way in, so e.g. spectrally normalized models work); the value must be picklable."""

    def __init__(self, fn: Callable[..., Any], *args: Any, enabled: bool = True, **kwargs: Any) -> None:
        self._call = (fn, args, kwargs)
        self._pool = self._async = None
        if enabled:
            key = id(self)
            _INHERITED[key] = self._call
            try:
                self._pool = forked_pool(1)  # the fork copies _INHERITED as it is now
            finally:
                del _INHERITED[key]
            self._async = self._pool.apply_async(_call_inherited, (key,))

    def result(self) -> Any:
        if self._pool is None:
            fn, args, kwargs = self._call
            return fn(*args, **kwargs)
        try:
            return self._async.get()
        finally:
            self._pool.close()
            self._pool.join()
