import dataclasses

import pytest
import yaml

from cifar_study.pipeline.errors import ParamError
from cifar_study.pipeline.params import Params, load_params, parse_params
from cifar_study.pipeline.untrusted import load_yaml
from tests.conftest import ROOT, workspace_or_committed


def test_committed_params_are_valid_spell_out_every_key_and_the_defaults_are_the_seed_protocol():
    # A user's params.yaml (edited, committed, an experiment's) is theirs: it must load and name every key,
    # whatever its values. The seed protocol is the code's defaults.
    raw = load_yaml(ROOT / "params.yaml")
    load_params(ROOT / "params.yaml")
    assert {f"{s}.{k}" for s, section in raw.items() for k in section} == \
        {f"{s}.{k}" for s, section in dataclasses.asdict(Params()).items() for k in section}
    p = Params()
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
    ({"train": {"epochs": 2.5}}, "train.epochs: expected int (a number of epochs), got 2.5"),
    ({"train": {"epochs": True}}, "train.epochs: expected int (a number of epochs), got True"),
    ({"data": {"val_size": 0.1}}, "data.val_size: expected int (a number of images held out of train, not a fraction), got 0.1"),
    ({"data": {"train_limit": 0.5}}, "data.train_limit: expected int (a number of images; 0 = all), got 0.5"),
    ({"train": {"batch_size": 12.8}}, "train.batch_size: expected int (a number of images per batch), got 12.8"),
    ({"train": {"lr": 0}}, "train.lr: 0.0 must be > 0.0"),
    ({"train": {"lr": -0.1}}, "train.lr: -0.1 must be > 0.0"),
    ({"train": {"batch_size": 0}}, "train.batch_size: 0 must be > 0"),
    ({"train": {"device": "tpu"}}, "train.device: 'tpu' is not one of auto, cpu, cuda, mps"),
    ({"train": {"amp": "fp8"}}, "train.amp: 'fp8' is not one of none, bf16, fp16"),
    ({"train": {"channels_last": "yes"}}, "train.channels_last: expected bool, got 'yes'"),
    ({"train": {"flow_every": 0}}, "train.flow_every: 0 must be > 0"),
    ({"train": {"compile_mode": "fast"}}, "train.compile_mode: 'fast' is not one of default, reduce-overhead"),
    ({"train": {"compile_mode": "reduce-overhead"}}, "train.compile_mode: 'reduce-overhead' needs train.compile: true"),
    ({"train": {"fused_adam": 1}}, "train.fused_adam: expected bool, got 1"),
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


def test_every_parameter_is_in_params_yaml(tmp_path):
    defaults = Params()
    wanted = {section: set(defaults.section(section)) for section in ("data", "model", "train", "plots", "wandb")}

    def keys(root):
        return {section: set(values) for section, values in yaml.safe_load((root / "params.yaml").read_text()).items()}

    assert any(keys(root) == wanted for root in workspace_or_committed(["params.yaml"], tmp_path))


def test_data_path_expands_home_and_a_missing_path_names_the_path_checked(tmp_path, monkeypatch):
    from cifar_study.pipeline.dataset import fetch
    from cifar_study.pipeline.errors import DataError

    monkeypatch.setenv("HOME", str(tmp_path))
    p = parse_params({"data": {"source": "folder", "path": "~/cifar10-jpg.tar.gz"}}).data
    assert p.path == str(tmp_path / "cifar10-jpg.tar.gz")
    with pytest.raises(DataError) as err:
        fetch(p)
    assert str(err.value) == f"data.path: {tmp_path / 'cifar10-jpg.tar.gz'} does not exist"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"data.path: {tmp_path / 'relative/x.tar'} does not exist"):
        fetch(parse_params({"data": {"source": "folder", "path": "relative/x.tar"}}).data)
