import pytest
import torch

from cifar_study.core.model import SimpleCNN
from cifar_study.pipeline.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cifar_study.pipeline.errors import CheckpointError
from cifar_study.pipeline.params import ModelParams

CLASSES = [f"c{i}" for i in range(10)]


def save(path, model, classes=CLASSES, **extra):
    save_checkpoint(path, model_state=model.state_dict(),
                    model={"name": "simple_cnn", "dropout": 0.5}, classes=classes, mean=[0.5] * 3,
                    std=[0.25] * 3, epoch=3, history=[{"epoch": 1, "train_loss": 1.0}], **extra)


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = SimpleCNN().eval()
    save(tmp_path / "m.pt", model)
    state = load_checkpoint(tmp_path / "m.pt")
    loaded = model_from_checkpoint(state)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert state["classes"] == CLASSES and state["epoch"] == 3 and state["history"][0]["train_loss"] == 1.0


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_garbage_file_is_refused(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_checkpoint_with_code_is_refused(tmp_path):
    torch.save({"model_state": {}, "evil": ModelParams()}, tmp_path / "code.pt")  # a pickled class
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "code.pt")


def test_other_class_count_is_a_clear_error(tmp_path):
    save(tmp_path / "m.pt", SimpleCNN(num_classes=5), classes=CLASSES)
    with pytest.raises(CheckpointError, match="does not fit simple_cnn with 10 classes"):
        model_from_checkpoint(load_checkpoint(tmp_path / "m.pt"))
