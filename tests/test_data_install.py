"""python -m robustlib.data.install: copies exactly the files the loader reads, after checking them."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from robustlib.data import install as I
from robustlib.data.datasets import check_files, load_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _packed(folder: Path, per_class_train: int = 2, per_class_test: int = 1) -> None:
    """A tiny packed CIFAR-10 in the real format (arrays x uint8 NHWC, y int64), plus a file no stage reads."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in I.PACKED_CIFAR10:
        k = per_class_test if name == "test.npz" else per_class_train
        y = np.repeat(np.arange(10), k)
        np.savez_compressed(folder / name, x=rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8), y=y)
    (folder / "test_filenames.txt").write_text("not read by any stage\n")


def test_packed_cifar10_copies_only_the_arrays_and_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(I, "_check_packed_cifar10", lambda folder: None)  # the class counts of the full set
    _packed(tmp_path / "src")
    out = I.install("cifar10", tmp_path / "src", tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data" / "cifar10").iterdir()) == sorted(I.PACKED_CIFAR10)
    assert [p.name for p in out] == list(I.PACKED_CIFAR10)
    assert check_files("cifar10", tmp_path / "data") == "packed-npz:cifar10"
    assert len(load_split("cifar10", train=False, root=tmp_path / "data")) == 10
    before = {p: p.stat().st_mtime_ns for p in out}
    I.install("cifar10", tmp_path / "src", tmp_path / "data")  # again: identical files are left alone
    assert {p: p.stat().st_mtime_ns for p in out} == before


def test_packed_cifar10_checks_the_class_counts(tmp_path):
    _packed(tmp_path / "src")  # 2 per class in each of 5 files, not the official 5,000
    with pytest.raises(I.DataInstallError, match=r"CIFAR-10 train: \[10, 10, .*expected 5000 each"):
        I.install("cifar10", tmp_path / "src", tmp_path / "data")
    assert not (tmp_path / "data" / "cifar10").exists()  # nothing copied


def test_a_malformed_array_is_refused(tmp_path):
    _packed(tmp_path / "src")
    np.savez_compressed(tmp_path / "src" / "train_3.npz", x=np.zeros((4, 3, 32, 32), np.uint8), y=np.zeros(4))
    with pytest.raises(I.DataInstallError, match=r"train_3.npz: expected x uint8 \(N, 32, 32, 3\)"):
        I.install("cifar10", tmp_path / "src", tmp_path / "data")


def test_missing_file_names_what_is_missing(tmp_path):
    _packed(tmp_path / "src")
    (tmp_path / "src" / "train_5.npz").unlink()
    with pytest.raises(I.DataInstallError, match="does not hold"):
        I.install("cifar10", tmp_path / "src", tmp_path / "data")


def test_mnist_archives_are_checked_against_torchvision_md5s(tmp_path, root):
    src = root / "data" / "MNIST" / "raw"
    out = I.install("mnist", src, tmp_path / "data")
    assert sorted(p.name for p in out) == sorted(p.name for p in src.glob("*.gz"))
    bad = tmp_path / "bad"
    shutil.copytree(src, bad, ignore=shutil.ignore_patterns("*-ubyte"))
    with (bad / "t10k-labels-idx1-ubyte.gz").open("ab") as f:
        f.write(b"x")
    with pytest.raises(I.DataInstallError, match="t10k-labels-idx1-ubyte.gz: MD5"):
        I.install("mnist", bad, tmp_path / "data2")


@pytest.mark.skipif(not (SHARED / "cifar10" / "test.npz").exists(), reason="the workplace's CIFAR-10 copy is absent")
def test_the_real_cifar10_copy_passes_its_checks(tmp_path):
    out = I.install("cifar10", SHARED / "cifar10", tmp_path)
    h = hashlib.sha256((tmp_path / "cifar10" / "test.npz").read_bytes()).hexdigest()
    assert len(out) == 6 and h == hashlib.sha256((SHARED / "cifar10" / "test.npz").read_bytes()).hexdigest()
