"""How the report's figures and summaries write a budget and a class: L-inf eps as k/255 on 8-bit colour
datasets (the paper writes 2/255 and 8/255 for CIFAR-10; params hold them as 0.0078431 and 0.0313725),
class names where the dataset has them. A module of its own, importing nothing of the evaluation, so that
every figure may use it without depending on more."""

from __future__ import annotations

PER_255_DATASETS = frozenset({"cifar10", "cifar100"})
"""Datasets whose L-inf budgets are written in steps of 1/255 (the paper's CIFAR-10 convention); MNIST
budgets are written as decimals (0.1, 0.3), as the MNIST literature writes them."""
PER_255_TOL = 1e-3
"""eps x 255 within this of an integer is written k/255 (params round 8/255 to 0.0313725)."""

CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
"""Class names by dataset (torchvision's order); a dataset not listed is labelled by class index."""


def format_eps(eps: float, dataset: str | None = None) -> str:
    """An L-inf budget as the paper writes it: ``k/255`` on a ``PER_255_DATASETS`` dataset when eps is
    (within ``PER_255_TOL``) a whole number of 1/255 steps, e.g. 0.0078431 -> ``2/255``; ``0`` for 0;
    otherwise ``%g`` (0.3 -> ``0.3``; 0.1 -> ``0.1`` on MNIST)."""
    eps = float(eps)
    if eps == 0:
        return "0"
    if dataset in PER_255_DATASETS:
        k = round(eps * 255)
        if k > 0 and abs(eps * 255 - k) < PER_255_TOL:
            return f"{k}/255"
    return f"{eps:g}"


def class_name(dataset: str | None, label: int) -> str:
    """Class ``label`` of ``dataset`` in words where ``CLASS_NAMES`` has them, else the index."""
    names = CLASS_NAMES.get(dataset or "")
    return names[int(label)] if names and 0 <= int(label) < len(names) else str(int(label))
