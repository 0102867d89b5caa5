import gzip
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
import torchvision

from robustlib.data.datasets import (
    MissingDataError,
    augment_crop_flip,
    check_files,
    data_root,
    iterate_batches,
    load_split,
    make_split,
)

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _write_idx(folder, n_train=12, n_test=5, gz=False, seed=0):
    """Write MNIST-format IDX files (the on-disk format torchvision reads)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        data[prefix] = (x, y)
        img = struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes()
        lab = struct.pack(">II", 2049, n) + y.tobytes()
        for name, blob in ((f"{prefix}-images-idx3-ubyte", img), (f"{prefix}-labels-idx1-ubyte", lab)):
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (folder / name).write_bytes(blob)
    return data


def test_fashion_mnist_from_files_in_torchvision_format(tmp_path):
    data = _write_idx(tmp_path / "FashionMNIST" / "raw")
    train = load_split("fashion_mnist", True, tmp_path)
    test = load_split("fashion_mnist", False, tmp_path)
    assert train.x.shape == (12, 1, 28, 28) and train.x.dtype == torch.uint8
    assert np.array_equal(train.x[:, 0].numpy(), data["train"][0])
    assert np.array_equal(test.y.numpy(), data["t10k"][1].astype(np.int64))
    assert train.source == "torchvision:FashionMNIST"
    assert float(train.images().max()) <= 1.0


def test_missing_files_name_the_files_and_where_to_put_them(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(MissingDataError) as err:
        load_split("mnist", True, tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "MNIST" / "raw") in msg
    with pytest.raises(MissingDataError, match="cifar10/train_\\*.npz"):
        check_files("cifar10", tmp_path)
    with pytest.raises(MissingDataError, match="cifar-100-python"):
        load_split("cifar100", False, tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("svhn", True, tmp_path)


def test_shipped_mnist_loads_offline_with_official_sizes(root, tmp_path):
    shutil.copytree(root / "data" / "MNIST" / "raw", tmp_path / "MNIST" / "raw",
                    ignore=shutil.ignore_patterns("*-ubyte"))  # only the archives, as in a fresh clone
    test = load_split("mnist", False, tmp_path)  # verifies MD5s and extracts, no network
    assert len(test) == 10000 and test.y.bincount().tolist()[0] == 980


def test_cifar10_packed_arrays(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    parts = []
    for i in (1, 2):
        x, y = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 4).astype(np.int64)
        np.savez_compressed(folder / f"train_{i}.npz", x=x, y=y)
        parts.append((x, y))
    np.savez_compressed(folder / "test.npz", x=parts[0][0][:2], y=parts[0][1][:2])
    train = load_split("cifar10", True, tmp_path)
    assert train.source == "packed-npz:cifar10" and train.x.shape == (8, 3, 32, 32)
    assert np.array_equal(train.x[5].permute(1, 2, 0).numpy(), parts[1][0][1])  # NHWC -> NCHW
    assert len(load_split("cifar10", False, tmp_path)) == 2


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvision_cifar_pickles(tmp_path, monkeypatch, name):
    """Small files in torchvision's pickle-batch format; torchvision's MD5 check is bypassed (the
    official checksums cannot match synthetic files); its parsing code is what is tested."""
    rng = np.random.default_rng(1)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = tmp_path / cls.base_folder
    folder.mkdir()
    key = "labels" if name == "cifar10" else "fine_labels"
    expected = {}
    for fname, _ in cls.train_list + cls.test_list:
        x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 3).tolist()
        expected[fname] = (x, y)
        with open(folder / fname, "wb") as f:
            pickle.dump({"data": x, key: y}, f)
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: [f"c{i}" for i in range(100)]}, f)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    test = load_split(name, False, tmp_path)
    x, y = expected[cls.test_list[0][0]]
    assert test.source == f"torchvision:{cls.base_folder}"
    assert np.array_equal(test.x.reshape(3, -1).numpy(), x) and test.y.tolist() == y


def test_environment_overrides_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTLIB_DATA", str(tmp_path))
    assert data_root("data") == tmp_path
    monkeypatch.delenv("ROBUSTLIB_DATA")
    assert str(data_root("data")) == "data"


def test_split_is_seeded_disjoint_and_sized():
    a = make_split("mnist", 1000, 300, n_train=500, n_val=100, n_test=50, seed=3)
    b = make_split("mnist", 1000, 300, n_train=500, n_val=100, n_test=50, seed=3)
    c = make_split("mnist", 1000, 300, n_train=500, n_val=100, n_test=50, seed=4)
    assert a == b and a.test != c.test
    assert not set(a.train) & set(a.val)
    assert (len(a.train), len(a.val), len(a.test)) == (500, 100, 50)
    full = make_split("mnist", 1000, 300, n_train=None, n_val=100, n_test=None, seed=0)
    assert len(full.train) == 900 and len(full.test) == 300
    with pytest.raises(ValueError, match="impossible sizes"):
        make_split("mnist", 1000, 300, n_train=950, n_val=100, n_test=10, seed=0)


def test_split_roundtrip(tmp_path):
    s = make_split("mnist", 100, 30, 50, 10, 5, seed=1, source="x")
    s.save(tmp_path / "s.json")
    assert type(s).load(tmp_path / "s.json") == s


def test_batches_cover_everything_once():
    g = torch.Generator().manual_seed(0)
    idx = torch.cat(list(iterate_batches(103, 10, g)))
    assert sorted(idx.tolist()) == list(range(103))


def test_crop_flip_is_a_shifted_or_flipped_copy():
    x = torch.rand(64, 3, 8, 8)
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):  # brute force: some crop of the padded image, flipped or not, equals the output
        ok = any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1))
                 for dy in range(5) for dx in range(5) for c in [padded[i, :, dy:dy + 8, dx:dx + 8]])
        assert ok


def test_split_test_examples_are_the_first_n_of_the_evaluation_order(tmp_path):
    """Every evaluation stage takes the first n test examples of the split's seeded evaluation order;
    asking for more than the split holds is an error, not a silent shortfall."""
    from robustlib.data.datasets import Split, make_split

    data = _write_idx(tmp_path / "MNIST" / "raw", n_train=12, n_test=9)
    split = make_split("mnist", 12, 9, 8, 2, 6, seed=3)
    split.save(tmp_path / "split.json")
    x, y, idx = Split.load(tmp_path / "split.json").test_examples(4, tmp_path)
    order = split.evaluation_order()
    assert idx == order[:4] and sorted(order) == split.test and len(set(idx)) == 4
    assert torch.equal(x[:, 0], torch.from_numpy(data["t10k"][0][idx]).float() / 255)
    assert y.tolist() == data["t10k"][1][idx].tolist()
    assert split.test_examples(6, tmp_path)[2][:4] == idx  # a smaller n is a prefix of a larger one
    with pytest.raises(ValueError, match="split holds 6"):
        split.test_examples(7, tmp_path)


def test_evaluation_sample_is_random_when_the_stored_test_set_is_sorted_by_class(tmp_path):
    """The packed CIFAR-10 test arrays are sorted by class: the first 100 evaluation examples of a split over
    all 1,000 test images (here 10 classes x 100, sorted) hold every class, not only the first one."""
    from robustlib.data.datasets import make_split

    folder = tmp_path / "cifar10"
    folder.mkdir()
    x = np.zeros((1000, 32, 32, 3), dtype=np.uint8)
    np.savez_compressed(folder / "train_1.npz", x=x[:20], y=np.zeros(20, dtype=np.int64))
    np.savez_compressed(folder / "test.npz", x=x, y=np.repeat(np.arange(10), 100).astype(np.int64))
    split = make_split("cifar10", 20, 1000, None, 2, None, seed=0)
    assert split.test == list(range(1000))  # sorted: its prefix would be class 0 only
    counts = np.bincount(split.test_examples(100, tmp_path)[1].numpy(), minlength=10)
    assert counts.min() >= 3 and counts.max() <= 20, counts
    assert make_split("cifar10", 20, 1000, None, 2, None, seed=0).evaluation_order() == split.evaluation_order()
