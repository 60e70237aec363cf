from pathlib import Path

import pytest
import yaml

from cifar_study.errors import ParamError
from cifar_study.params import Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_are_valid_and_are_the_seed_protocol():
    p = load_params(ROOT / "params.yaml")
    assert p == Params()  # params.yaml spells out every default
    assert (p.train.epochs, p.train.batch_size, p.train.lr, p.model.dropout) == (30, 128, 0.001, 0.5)
    assert p.data.source == "download" and p.data.val_size == 0


def test_ints_are_accepted_for_floats():
    assert parse_params({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize("raw, message", [
    ({"train": {"epoch": 3}}, "train.epoch: unknown key"),
    ({"trian": {}}, "trian: unknown key"),
    ({"train": {"lr": "fast"}}, "train.lr: expected float, got 'fast'"),
    ({"train": {"epochs": 0}}, "train.epochs: 0 must be > 0"),
    ({"train": {"epochs": -3}}, "train.epochs: -3 must be > 0"),
    ({"train": {"epochs": 2.5}}, "train.epochs: expected int, got 2.5"),
    ({"train": {"epochs": True}}, "train.epochs: expected int, got True"),
    ({"train": {"lr": 0}}, "train.lr: 0.0 must be > 0.0"),
    ({"train": {"lr": -0.1}}, "train.lr: -0.1 must be > 0.0"),
    ({"train": {"batch_size": 0}}, "train.batch_size: 0 must be > 0"),
    ({"train": {"device": "tpu"}}, "train.device: 'tpu' is not one of auto, cpu, cuda, mps"),
    ({"train": {"amp": "fp8"}}, "train.amp: 'fp8' is not one of none, bf16, fp16"),
    ({"train": {"channels_last": "yes"}}, "train.channels_last: expected bool, got 'yes'"),
    ({"train": {"flow_every": 0}}, "train.flow_every: 0 must be > 0"),
    ({"train": 5}, "train: expected a mapping"),
    ({"data": {"source": "ftp"}}, "data.source: 'ftp' is not one of download, folder, synthetic"),
    ({"data": {"train_limit": -1}}, "data.train_limit: -1 must be >= 0"),
    ({"data": {"test_limit": -5}}, "data.test_limit: -5 must be >= 0"),
    ({"data": {"val_size": -1}}, "data.val_size: -1 must be >= 0"),
    ({"model": {"name": "resnet"}}, "model.name: 'resnet' is not one of simple_cnn"),
    ({"model": {"dropout": 1.5}}, "model.dropout: 1.5 must be <= 0.999"),
    ({"plots": {"samples": 0}}, "plots.samples: 0 must be > 0"),
    ({"wandb": {"mode": "loud"}}, "wandb.mode: 'loud' is not one of offline, online, disabled"),
    ({"wandb": {"watch": "weights"}}, "wandb.watch: 'weights' is not one of all, gradients, parameters, none"),
    ({"wandb": {"watch": False}}, "wandb.watch: expected str, got False"),
    ({"wandb": {"watch_every": 0}}, "wandb.watch_every: 0 must be > 0"),
    ({"train": {"normalize": "imagenet"}}, "train.normalize: 'imagenet' is not one of original, computed"),
    ([1, 2], "params.yaml: expected a mapping"),
])
def test_bad_params_name_the_key_and_the_rule(raw, message):
    with pytest.raises(ParamError) as err:
        parse_params(raw)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(ParamError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_every_parameter_is_in_params_yaml():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = Params()
    for section, values in raw.items():
        assert set(values) == set(defaults.section(section)), section
