"""Forked CPU worker processes, one torch thread each, for work bound by Python overhead (AutoAttack's
Square, the perceptual attacks, MILP solves): the one way robustlib runs work in worker processes.

- ``imap(fn, items, processes)``: ``fn`` over the items, results in item order as they come, in a pool of
  forked workers: the attacks side by side (``robustlib.evaluation.worst_case.evaluate_attacks``) and the
  verifier's examples (``robustlib.verification.milp.verify``).
- ``Background(fn, *args)``: one call in one forked worker while the caller goes on: the robustness
  curves beside the attacks (attack stage) and the verify stage's AutoAttack.
- ``forked_pool(processes)``: the pool both start.

Two such jobs side by side use both cores of a small machine where one job cannot. Fork (not spawn)
keeps start-up cheap and lets workers inherit the function and its arguments (models and data that do
not pickle are fine); only items and results are pickled. Callers use it for CPU tensors only; on an
accelerator they run in-process (``processes=1``, ``enabled=False``).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from multiprocessing.pool import Pool
from typing import Any

import torch

from robustlib.attacks.common import check_count


def forked_pool(processes: int) -> Pool:
    """A pool of ``processes`` forked workers, each limited to one torch thread."""
    processes = check_count("processes", processes, 1)
    return mp.get_context("fork").Pool(processes, initializer=torch.set_num_threads, initargs=(1,))


_INHERITED: dict[int, tuple[Callable[..., Any], tuple, dict]] = {}  # calls forked workers inherit
_KEYS = itertools.count(-1, -1)  # keys for imap (negative: never an id())


def _call_inherited(key: int) -> Any:
    fn, args, kwargs = _INHERITED[key]
    return fn(*args, **kwargs)


def _call_inherited_on(key: int, item: Any) -> Any:
    fn, args, kwargs = _INHERITED[key]
    return fn(item, *args, **kwargs)


def imap(fn: Callable[[Any], Any], items: Iterable[Any], processes: int = 1) -> Iterator[Any]:
    """``fn(item)`` for every item, in order, as an iterator (results arrive as they finish, so a caller
    can persist them as it goes). ``processes > 1``: in that many forked workers, one torch thread
    each, that inherit ``fn`` through the fork (closures over models that do not pickle are fine);
    only the items and the results are pickled. ``processes == 1``: in this process."""
    processes = check_count("processes", processes, 1)
    items = list(items)
    if processes == 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    key = next(_KEYS)
    _INHERITED[key] = (fn, (), {})
    try:
        pool = forked_pool(min(processes, len(items)))  # the fork copies _INHERITED as it is now
    finally:
        del _INHERITED[key]
    try:
        yield from pool.imap(partial(_call_inherited_on, key), items, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


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
