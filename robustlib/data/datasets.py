"""Datasets, deterministic subsets and in-memory batch iteration.

Supported: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through ``torchvision.datasets``, and
CIFAR-10 from pre-packed NumPy arrays (``<root>/cifar10/train_*.npz`` and ``test.npz``, arrays ``x``
uint8 NHWC and ``y`` int64) when torchvision's files are absent. The data root comes from params
(default ``data/``) and is overridden by the environment variable ``ROBUSTLIB_DATA``. Nothing is
downloaded: a missing file raises ``MissingDataError`` naming the files and where to put them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo("fashion_mnist", 1, 28, 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


class MissingDataError(FileNotFoundError):
    """A dataset's files are not under the data root; the message says which and how to get them."""


def dataset_info(name: str) -> DatasetInfo:
    if name not in INFO:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    return INFO[name]


def data_root(default: str | os.PathLike = "data") -> Path:
    """The data root: ``$ROBUSTLIB_DATA`` if set, else ``default``."""
    return Path(os.environ.get("ROBUSTLIB_DATA") or default)


@dataclass
class ImageData:
    """A whole split in memory: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def images(self, idx: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Float32 images in [0, 1] for the given indices (all when ``idx`` is None)."""
        x = self.x if idx is None else self.x[torch.as_tensor(idx, dtype=torch.long)]
        return x.float().div_(255.0)

    def labels(self, idx: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        return self.y if idx is None else self.y[torch.as_tensor(idx, dtype=torch.long)]


def load_split(name: str, train: bool, root: str | os.PathLike | None = None) -> ImageData:
    """Load the train or test split of dataset ``name`` from ``root`` (see module docstring)."""
    dataset_info(name)
    root = data_root() if root is None else Path(root)
    if name in TORCHVISION_FOLDERS:
        return _load_mnist_like(name, train, root)
    if name == "cifar10":
        return _load_cifar10(train, root)
    return _load_torchvision_cifar(name, train, root)


def check_files(name: str, root: str | os.PathLike) -> str:
    """Check that dataset ``name``'s files are under ``root`` without loading them; return the source
    that will be used. Raises ``MissingDataError`` naming the missing files and how to get them."""
    dataset_info(name)
    root = Path(root)
    if name in TORCHVISION_FOLDERS:
        folder = TORCHVISION_FOLDERS[name]
        raw = root / folder / "raw"
        missing = [f"{f}.gz" for f in _MNIST_FILES if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]
        if missing:
            raise MissingDataError(
                f"{name}: missing {', '.join(missing)} in {raw}/. Install torchvision's {folder} archives from "
                f"a folder holding them: `python -m robustlib.data.install {name} <folder>` (checks their MD5s "
                f"and copies them to {raw}/), or set ROBUSTLIB_DATA to a data root holding {folder}/raw/."
            )
        return f"torchvision:{folder}"
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    if (root / folder).is_dir():
        return f"torchvision:{folder}"
    if name == "cifar10":
        packed = root / "cifar10"
        if sorted(packed.glob("train_*.npz")) and (packed / "test.npz").exists():
            return "packed-npz:cifar10"
        raise MissingDataError(
            f"cifar10: found neither torchvision's {root / folder}/ nor the packed arrays "
            f"{packed}/train_*.npz and test.npz. Install them from a folder holding either: "
            f"`python -m robustlib.data.install cifar10 <folder>` (on this workplace the folder is "
            f"../shared/data/cifar10), or set ROBUSTLIB_DATA to a data root that holds them."
        )
    raise MissingDataError(
        f"{name}: missing {root / folder}/. Install torchvision's extracted {folder} from a folder holding it: "
        f"`python -m robustlib.data.install {name} <folder>`, or set ROBUSTLIB_DATA."
    )


def _load_mnist_like(name: str, train: bool, root: Path) -> ImageData:
    import torchvision

    source = check_files(name, root)
    folder = TORCHVISION_FOLDERS[name]
    extracted = all((root / folder / "raw" / f).exists() for f in _MNIST_FILES)
    cls = getattr(torchvision.datasets, folder)
    # With the archives present, download=True only verifies their MD5s and extracts them.
    ds = cls(str(root), train=train, download=not extracted)
    return ImageData(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), source=source)


def _load_cifar10(train: bool, root: Path) -> ImageData:
    source = check_files("cifar10", root)
    if source.startswith("torchvision"):
        return _load_torchvision_cifar("cifar10", train, root)
    packed = root / "cifar10"
    files = sorted(packed.glob("train_*.npz")) if train else [packed / "test.npz"]
    xs, ys = [], []
    for f in files:
        with np.load(f, allow_pickle=False) as arr:
            xs.append(arr["x"])
            ys.append(arr["y"])
    x = torch.from_numpy(np.concatenate(xs)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
    return ImageData(x, y, source=source)


def _load_torchvision_cifar(name: str, train: bool, root: Path) -> ImageData:
    import torchvision

    source = check_files(name, root)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    ds = cls(str(root), train=train, download=False)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageData(x, torch.as_tensor(ds.targets, dtype=torch.long), source=source)


# ---------------------------------------------------------------------------------------------
# Deterministic subsets
# ---------------------------------------------------------------------------------------------
@dataclass
class Split:
    """Indices into the official train and test sets, chosen by seed and size."""

    dataset: str
    seed: int
    train: list[int]
    val: list[int]
    test: list[int]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        return cls(**json.loads(Path(path).read_text()))

    def evaluation_order(self) -> list[int]:
        """The split's test indices in the order evaluations take them: a permutation seeded by the
        split's seed. ``test`` is sorted, and a stored test set may be ordered by class (the packed
        CIFAR-10 arrays are), so a prefix of ``test`` itself is no random sample."""
        order = np.random.default_rng([int(self.seed), 1]).permutation(len(self.test))
        return [int(self.test[i]) for i in order]

    def test_examples(self, n: int, root: str | os.PathLike | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The first ``n`` test examples in ``evaluation_order`` (images, labels, indices into the
        official test set): a uniform random sample of the split's test set, the same examples in the
        same order for every evaluation stage and every run with this split; a smaller ``n`` gives a
        prefix of a larger one."""
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if n > len(self.test):
            raise ValueError(f"asked for {n} test examples, the {self.dataset} split holds {len(self.test)}: "
                             "raise data.n_test (and retrain) or lower the stage's n_test")
        idx = self.evaluation_order()[:n]
        test = load_split(self.dataset, train=False, root=root)
        return test.images(idx), test.labels(idx), idx


def make_split(dataset: str, n_train_total: int, n_test_total: int, n_train: int | None, n_val: int,
               n_test: int | None, seed: int, source: str = "") -> Split:
    """Seeded split: validation and training indices are disjoint draws from the official training
    set, test indices a draw from the official test set. ``None`` sizes mean "all the rest"."""
    n_train_avail = n_train_total - n_val
    if n_val < 0 or n_train_avail < 1:
        raise ValueError(f"impossible n_val={n_val} for a training set of {n_train_total}")
    n_train = n_train_avail if n_train is None else n_train
    n_test = n_test_total if n_test is None else n_test
    if not (1 <= n_train <= n_train_avail) or not (1 <= n_test <= n_test_total):
        raise ValueError(
            f"impossible sizes n_train={n_train}, n_val={n_val}, n_test={n_test} for {dataset} "
            f"({n_train_total} train / {n_test_total} test examples)"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_train_total)
    test = np.sort(rng.permutation(n_test_total)[:n_test])
    return Split(dataset, seed, sorted(perm[n_val:n_val + n_train].tolist()), sorted(perm[:n_val].tolist()),
                 test.tolist(), source)


def iterate_batches(n: int, batch_size: int, generator: torch.Generator | None,
                    shuffle: bool = True, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Yield index batches over ``range(n)``, shuffled by ``generator``."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip (standard CIFAR augmentation)."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h))  # (B, H)
    cols = (dx.view(b, 1) + torch.arange(w).view(1, w))  # (B, W)
    out = padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1),
                 rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
    flip = torch.rand(b, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out
