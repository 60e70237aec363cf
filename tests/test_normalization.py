"""Input normalisation: the original study's constants by default; evaluation uses what training used."""
import json

import pytest
import torch
import yaml

from cifar_study.core.cifar10 import ORIGINAL_MEAN, ORIGINAL_STD
from cifar_study.pipeline.dataset import channel_stats, normalization
from cifar_study.pipeline.params import Params
from tests.conftest import project, run_stage


def test_default_is_the_original_studys_constants(tiny):
    assert Params().train.normalize == "original"
    assert normalization("original", tiny.train.images) == ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
    assert normalization("computed", tiny.train.images) == channel_stats(tiny.train.images)  # metrics/data.json's


@pytest.mark.slow
def test_evaluation_normalises_with_the_checkpoints_mean_and_std(tmp_path):
    repo = project(tmp_path, data={"train_limit": 200}, train={"epochs": 1, "batch_size": 32})
    for name in ("fetch_data", "train", "evaluate"):
        code, _, err = run_stage(repo, name)
        assert code == 0, err
    checkpoint = torch.load(repo / "models/model.pt", weights_only=True)
    assert (checkpoint["mean"], checkpoint["std"]) == (list(ORIGINAL_MEAN), list(ORIGINAL_STD))
    assert checkpoint["train"]["normalize"] == "original"
    trained = json.loads((repo / "metrics/train.json").read_text())
    evaluated = (repo / "metrics/eval.json").read_text()
    # The train stage's last held-out pass is over the test split (data.val_size 0): evaluate repeats it
    # exactly only if it normalises the images as training did.
    assert trained["heldout_split"] == "test"
    assert (json.loads(evaluated)["test_acc"], json.loads(evaluated)["test_loss"]) == \
        (trained["heldout_acc"], trained["heldout_loss"])
    # evaluate takes mean and std from the checkpoint, never from params.yaml.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["normalize"] = "computed"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    code, _, err = run_stage(repo, "evaluate")
    assert code == 0, err
    assert (repo / "metrics/eval.json").read_text() == evaluated
