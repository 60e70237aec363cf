import math

import pytest
import torch

from cifar_study.device import resolve_device, seed_everything
from cifar_study.errors import ParamError
from cifar_study.loader import make_loader
from cifar_study.model import SimpleCNN
from cifar_study.params import TrainParams
from cifar_study.evaluation import evaluate
from cifar_study.history import EpochRecord
from cifar_study.training import TrainingDiverged, setup, train

CPU = torch.device("cpu")


def run(tiny, loader="tensor", **overrides):
    p = TrainParams(**{"epochs": 2, "batch_size": 32, "flow_every": 3, "loader": loader, **overrides})
    seed_everything(p.seed)
    mean, std = [0.5] * 3, [0.25] * 3
    train_loader = make_loader(loader, tiny.train, mean, std, augment=True, shuffle=True, batch_size=p.batch_size,
                               seed=p.seed, device=CPU)
    test_loader = make_loader(loader, tiny.test, mean, std, augment=False, shuffle=False, batch_size=100, seed=p.seed, device=CPU)
    model = SimpleCNN()
    return model, train(setup(model, p, CPU), train_loader, test_loader, "test")


def test_training_records_every_epoch_and_learns(tiny):
    _, result = run(tiny, epochs=3)
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert EpochRecord.columns() == ("epoch", "train_loss", "train_acc", "heldout_loss", "heldout_acc", "lr", "seconds")
    assert result.history[-1].heldout_acc > 0.3  # chance is 0.1
    assert all(math.isfinite(r.train_loss) for r in result.history)


def test_same_seed_same_metrics_on_cpu(tiny):
    strip = lambda h: [{k: v for k, v in r.row().items() if k != "seconds"} for r in h]  # noqa: E731
    for loader in ("tensor", "dataloader"):
        (_, a), (_, b) = run(tiny, loader), run(tiny, loader)
        assert strip(a.history) == strip(b.history)
    _, c = run(tiny, seed=7)
    assert strip(c.history) != strip(a.history)


def test_flow_snapshots_every_n_batches_of_every_non_bias_parameter(tiny):
    _, result = run(tiny)  # 7 batches an epoch (200 / 32), 14 steps, every 3rd
    assert [s.step for s in result.flow] == [0, 3, 6, 9, 12]
    assert [s.epoch for s in result.flow] == [1, 1, 1, 2, 2]
    assert result.flow[0].layers == ["block1.conv", "block1.bn", "block2.conv", "block2.bn", "block3.conv",
                                     "block3.bn", "block4.conv", "block4.bn", "fc1", "fc2"]
    for snap in result.flow:
        for grad_mean, grad_max, w_mean, w_max, update_ratio in snap.values:
            assert 0 < grad_mean <= grad_max and 0 < w_mean <= w_max and 0 < update_ratio < 1


def test_update_ratio_is_the_relative_size_of_the_step_taken(tiny):
    model, result = run(tiny, epochs=1, flow_every=1000)  # one snapshot: step 0, Adam's first step
    # Adam's first step moves every weight by exactly lr (m/sqrt(v) = sign(grad)): |dW| = lr * sqrt(n).
    fc2 = result.flow[0].layers.index("fc2")
    weights = model.fc2.weight.numel()
    # |W| before the step is |W| now give or take the steps since; the ratio is lr*sqrt(n)/|W| within 10%.
    expected = 1e-3 * weights ** 0.5 / model.fc2.weight.detach().norm().item()
    assert result.flow[0].values[fc2][4] == pytest.approx(expected, rel=0.1)


def test_non_finite_loss_stops_training_naming_epoch_and_batch(tiny):
    # Batch 1 has a finite loss; its step with lr=inf makes the weights, and so batch 2, non-finite.
    with pytest.raises(TrainingDiverged, match=r"non-finite at epoch 1, batch 2\b"):
        run(tiny, lr=float("inf"), flow_every=1000)


def test_bf16_autocast_on_cpu_trains(tiny):
    _, result = run(tiny, amp="bf16", channels_last=True, epochs=1)
    assert math.isfinite(result.history[0].train_loss)


def test_fp16_on_cpu_is_refused(tiny):
    with pytest.raises(ParamError, match="train.amp: 'fp16' needs a CUDA device"):
        run(tiny, amp="fp16", epochs=1)


def test_evaluate_matches_a_manual_count(tiny):
    model, _ = run(tiny, epochs=1)
    loader = make_loader("tensor", tiny.test, [0.5] * 3, [0.25] * 3, augment=False, shuffle=False, batch_size=7, seed=0, device=CPU)
    result = evaluate(model, loader, CPU)
    assert result.predictions().shape == (50,) and result.logits.shape == (50, 10)
    assert result.acc == pytest.approx((result.predictions() == result.labels).float().mean().item())
    assert ((result.confidence() >= 0.1) & (result.confidence() <= 1)).all()  # the top of 10 probabilities


def test_device_resolution():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ParamError, match="train.device: 'cuda' asked for"):
            resolve_device("cuda")
