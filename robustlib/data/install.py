"""Put a dataset in place from a folder you name: copy exactly the files the pipeline reads, and check them.

    python -m robustlib.data.install cifar10 /path/to/cifar10      # e.g. ../shared/data/cifar10 here
    python -m robustlib.data.install mnist /path/to/MNIST/raw

The files land under the data root (``data/``, or ``$ROBUSTLIB_DATA``) in the layout
``robustlib.data.datasets`` reads, which is also what the stages' DVC data dependency hashes, so a
restored profile's ``dvc status`` stays clean. Sources: torchvision's archives or extracted folders
(checked against torchvision's own MD5s), or for CIFAR-10 the packed arrays ``train_1..5.npz`` and
``test.npz`` (checked for shape, dtype, labels and the per-class counts of the official sets).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torchvision

from robustlib.data.datasets import DATASETS, TORCHVISION_FOLDERS, data_root, dataset_info
from robustlib.pipeline.io import file_digest

logger = logging.getLogger(__name__)

PACKED_CIFAR10 = (*(f"train_{i}.npz" for i in range(1, 6)), "test.npz")
_TV_CIFAR = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}


class DataInstallError(ValueError):
    """The source folder lacks a file the pipeline reads, or a file fails its check."""


def _find(source: Path, names: list[str], subfolders: tuple[str, ...]) -> Path:
    """The folder among ``source`` and ``source/<sub>`` that holds every one of ``names``."""
    for folder in (source, *(source / s for s in subfolders)):
        if all((folder / n).is_file() for n in names):
            return folder
    raise DataInstallError(f"{source} does not hold {names} (looked in {source} and {list(subfolders)} below it)")


def _check_md5s(folder: Path, expected: dict[str, str]) -> None:
    for name, md5 in expected.items():
        got = file_digest(folder / name, "md5")
        if got != md5:
            raise DataInstallError(f"{folder / name}: MD5 {got}, expected torchvision's {md5}")


def _check_packed_cifar10(folder: Path) -> None:
    """Each array: uint8 images (N, 32, 32, 3), labels 0-9; 5,000 per class in train, 1,000 in test."""
    counts = {"train": np.zeros(10, dtype=np.int64), "test": np.zeros(10, dtype=np.int64)}
    for name in PACKED_CIFAR10:
        with np.load(folder / name, allow_pickle=False) as arr:
            x, y = arr["x"], arr["y"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or y.shape != (x.shape[0],):
            raise DataInstallError(f"{folder / name}: expected x uint8 (N, 32, 32, 3) and y (N,), got "
                                   f"x {x.dtype} {x.shape}, y {y.shape}")
        if y.min() < 0 or y.max() > 9:
            raise DataInstallError(f"{folder / name}: labels outside 0-9")
        counts["test" if name == "test.npz" else "train"] += np.bincount(y, minlength=10)
    for split, per_class in (("train", 5000), ("test", 1000)):
        if not (counts[split] == per_class).all():
            raise DataInstallError(f"CIFAR-10 {split}: {counts[split].tolist()} images per class, "
                                   f"expected {per_class} each")


def _plan(dataset: str, source: Path, root: Path) -> tuple[Path, Path, list[str]]:
    """(folder holding the files, destination folder, file names), after checking the files."""
    if dataset in TORCHVISION_FOLDERS:
        tv = getattr(torchvision.datasets, TORCHVISION_FOLDERS[dataset])
        md5s = {Path(url).name: md5 for url, md5 in tv.resources}
        folder = _find(source, sorted(md5s), ("raw", f"{TORCHVISION_FOLDERS[dataset]}/raw"))
        _check_md5s(folder, md5s)
        return folder, root / TORCHVISION_FOLDERS[dataset] / "raw", sorted(md5s)
    tv = _TV_CIFAR[dataset]
    if dataset == "cifar10" and not (source / tv.base_folder).is_dir() and not (source / "data_batch_1").is_file():
        folder = _find(source, list(PACKED_CIFAR10), ("cifar10",))
        _check_packed_cifar10(folder)
        return folder, root / "cifar10", list(PACKED_CIFAR10)
    md5s = dict(tv.train_list + tv.test_list + [[tv.meta["filename"], tv.meta["md5"]]])
    folder = _find(source, sorted(md5s), (tv.base_folder,))
    _check_md5s(folder, md5s)
    return folder, root / tv.base_folder, sorted(md5s)


def install(dataset: str, source: str | Path, root: str | Path | None = None) -> list[Path]:
    """Copy ``dataset``'s files that the pipeline reads from ``source`` into ``root`` (the data root), after
    checking them; return the installed paths. Files already there with the same bytes are left alone."""
    dataset_info(dataset)
    source, root = Path(source), data_root() if root is None else Path(root)
    if not source.is_dir():
        raise DataInstallError(f"source folder {source} does not exist")
    folder, dest, names = _plan(dataset, source, root)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        src, dst = folder / name, dest / name
        same = dst.is_file() and dst.stat().st_size == src.stat().st_size
        if not (same and file_digest(dst, "md5") == file_digest(src, "md5")):
            shutil.copyfile(src, dst)
        out.append(dst)
    logger.info("installed %s: %d files in %s", dataset, len(out), dest)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustlib.data.install", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("source", help="folder holding the dataset's files (torchvision's, or packed CIFAR-10 arrays)")
    parser.add_argument("--root", default=None, help="data root (default: $ROBUSTLIB_DATA or data/)")
    args = parser.parse_args(argv)
    try:
        paths = install(args.dataset, args.source, args.root)
    except (DataInstallError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.dataset}: {len(paths)} files in {paths[0].parent} (checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
