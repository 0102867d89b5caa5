import pytest
import torch

from robustlib.models import build_model
from robustlib.pipeline.io import atomic_write, load_model, read_json, save_model, write_json


def test_checkpoint_roundtrip_rebuilds_an_eval_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("smallcnn", in_channels=1, image_size=28, num_classes=10, mean=(0.1,), std=(0.3,))
    save_model(model, tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)  # loadable without unpickling code
    assert blob["arch"]["name"] == "smallcnn"
    loaded = load_model(tmp_path / "m.pt")
    assert not loaded.training
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path):
    """DVC records checkpoints by md5: equal weights must make equal files, whatever the file is called
    and whatever temporary name the atomic write used."""
    torch.manual_seed(0)
    model = build_model("smallcnn", in_channels=1, image_size=28, num_classes=10, mean=(0.1,), std=(0.3,))
    save_model(model, tmp_path / "model.pt")
    (tmp_path / "other").mkdir()
    save_model(model, tmp_path / "other" / "checkpoint.pt")
    assert (tmp_path / "model.pt").read_bytes() == (tmp_path / "other" / "checkpoint.pt").read_bytes()


def test_spectral_norm_checkpoint_roundtrip(tmp_path):
    model = build_model("mlp", spectral_norm=True, hidden=(16,), mean=(0.0,), std=(1.0,))
    model(torch.rand(2, 1, 28, 28))
    save_model(model, tmp_path / "m.pt")
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(load_model(tmp_path / "m.pt")(x), model.eval()(x))


def test_missing_checkpoint_and_foreign_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        load_model(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="build_model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.json"
    write_json({"a": 1}, target)

    def broken(p):
        p.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
