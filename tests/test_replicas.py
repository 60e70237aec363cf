"""Seed replicas trained together are the same experiments as separate runs, and never mix."""
import copy
import re

import pytest
import torch

from cifar_study.core.loader import make_loader
from cifar_study.core.model import build_model
from cifar_study.core.replicas import ReplicaLoader, Replicas, build_replicas, replica_losses
from cifar_study.core.runtime import seed_everything
from cifar_study.core.training import setup, train
from cifar_study.pipeline.dataset import Dataset, Split
from cifar_study.pipeline.errors import ParamError
from cifar_study.pipeline.params import ModelParams, TrainParams, parse_params
from cifar_study.pipeline.resume import ResumeStore

CPU = torch.device("cpu")
MEAN, STD = [0.5] * 3, [0.25] * 3
NO_DROPOUT = ModelParams(dropout=0.0)
LR = 1e-4  # a calm run: at 1e-3 these 80 images drive the loss to 9, which amplifies rounding differences


@pytest.fixture(scope="module")
def small(tiny) -> Dataset:
    """80 training images (3 batches of 32, the last one short) and 20 test images."""
    return Dataset(Split(tiny.train.images[::2][:80], tiny.train.labels[::2][:80]),
                   Split(tiny.test.images[:20], tiny.test.labels[:20]), tiny.classes)


def loaders(ds, seed):
    train_loader = make_loader("tensor", ds.train, MEAN, STD, augment=True, shuffle=True, batch_size=32, seed=seed,
                               device=CPU)
    test_loader = make_loader("tensor", ds.test, MEAN, STD, augment=False, shuffle=False, batch_size=100, seed=seed,
                              device=CPU)
    return train_loader, test_loader


def single_run(ds, seed, epochs=2, model_params=NO_DROPOUT):
    p = TrainParams(epochs=epochs, batch_size=32, seed=seed, flow_every=2, lr=LR)
    seed_everything(seed)
    train_loader, test_loader = loaders(ds, seed)
    model = build_model(model_params, 10)
    return model, train(setup(model, p, CPU), train_loader, test_loader, "test")


def stacked_run(ds, seed, k, batched, epochs=2, model_params=NO_DROPOUT):
    p = TrainParams(epochs=epochs, batch_size=32, seed=seed, flow_every=2, replicas=k, lr=LR)
    seed_everything(seed)
    train_loader = ReplicaLoader([loaders(ds, seed + j)[0] for j in range(k)])
    test_loader = loaders(ds, seed)[1]
    model = build_replicas(model_params, 10, seed, k, batched)
    return model, train(setup(model, p, CPU), train_loader, test_loader, "test")


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return a == pytest.approx(b, rel=rel, abs=rel / 10)


@pytest.fixture(scope="module")
def singles(small) -> list:
    """The separate runs seeded 42 and 43, once for both ways of stacking."""
    return [single_run(small, 42 + j)[1] for j in range(2)]


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "vmap"])
def test_each_replica_is_the_single_run_with_its_seed(small, singles, batched):
    _, stacked = stacked_run(small, 42, 2, batched)
    for j, single in enumerate(singles):
        for got, want in zip(stacked.replicas[j], single.history, strict=True):
            for name in ("train_loss", "train_acc", "heldout_loss", "heldout_acc"):
                # Equal up to summation order (grouped convolutions under vmap).
                assert close(getattr(got, name), getattr(want, name), rel=1e-4), (j, got.epoch, name)
    # Replica 0 is what the study's files (history, flow, model.pt) report.
    assert stacked.history == stacked.replicas[0]
    assert [s.step for s in stacked.flow] == [0, 2, 4]


def per_step_losses(ds: Dataset, lr: float, passes: int, k: int = 2, seed: int = 7) -> list[list[tuple[float, float]]]:
    """Per step, each replica's (stacked loss, its separate run's loss) on the same batch, from the same start.
    Also run by notes/suite-on-two-cpus/replica_steps.py."""
    model = build_replicas(NO_DROPOUT, 10, seed, k, batched=True)
    singles = []
    for j in range(k):
        torch.manual_seed(seed + j)
        singles.append(build_model(NO_DROPOUT, 10))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in singles]
    stream = ReplicaLoader([loaders(ds, seed + j)[0] for j in range(k)])
    model.train()
    for m in singles:
        m.train()
    steps = []
    for x, y in list(stream) * passes:
        losses = replica_losses(model(x), y)
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
        steps.append([])
        for j, (m, o) in enumerate(zip(singles, opts)):
            loss = torch.nn.functional.cross_entropy(m(x[j]), y[j])
            o.zero_grad()
            loss.backward()
            o.step()
            steps[-1].append((losses[j].item(), loss.item()))
    return steps


def test_per_step_losses_match_separate_runs(small):
    """Step by step, each replica's loss is the loss its own single run computes on the same batch.
    One pass (3 steps, the last one short): Adam divides by sqrt(v) + eps, so rounding noise in near-zero
    gradients becomes lr-sized steps, and on an AVX-512 Xeon the runs parted by 6e-4 relative by step 6
    (notes/2026-11-29-suite-on-two-cpus.md); a mixed-up replica (wrong batch, shared statistics) is off by
    orders of magnitude more."""
    for step, pairs in enumerate(per_step_losses(small, LR, passes=1)):
        assert all(close(stacked, single) for stacked, single in pairs), (step, pairs)


def test_no_statistic_crosses_replicas(small):
    """Poison replica 1's batch: replica 0's loss, gradients and BatchNorm statistics do not move."""
    model = build_replicas(NO_DROPOUT, 10, 0, 2, batched=True)
    x, y = next(iter(ReplicaLoader([loaders(small, s)[0] for s in (0, 1)])))

    def step(images):
        m = copy.deepcopy(model)
        m.train()
        logits = m(images)
        losses = replica_losses(logits, y)
        losses.sum().backward()
        grads = [p.grad[0].clone() for p in m.stacked]
        return losses[0].item(), grads, m.replica_state(0)

    poisoned = x.clone()
    poisoned[1] = poisoned[1] * 100 + 7
    base, other = step(x), step(poisoned)
    assert base[0] == other[0]
    for a, b in zip(base[1], other[1]):
        assert torch.equal(a, b)
    for name in base[2]:
        assert torch.equal(base[2][name], other[2][name]), name


def test_replica_j_starts_from_the_weights_of_the_single_run_seeded_seed_plus_j():
    # Weights after training are compared through the metrics above, not element by element: where a
    # gradient is zero in exact arithmetic (a conv bias before BatchNorm), Adam turns rounding noise into
    # full-size steps, so such elements differ by about lr per step whatever the summation order.
    stacked = build_replicas(ModelParams(), 10, 5, 3, batched=True)
    for j in range(3):
        torch.manual_seed(5 + j)
        for name, tensor in build_model(ModelParams(), 10).state_dict().items():
            assert torch.equal(stacked.replica_state(j)[name], tensor), (j, name)


def test_replicas_of_the_same_seed_are_identical_and_a_stack_unstacks(small):
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        models.append(build_model(ModelParams(), 10))
    stacked = Replicas(models, batched=False)
    for name, tensor in models[0].state_dict().items():
        assert torch.equal(stacked.replica_state(1)[name], tensor)
    assert isinstance(stacked, torch.nn.Module) and not any(p.is_meta for p in stacked.parameters())


def test_a_resumed_stacked_run_continues_every_replica_exactly(small, tmp_path):
    """Interrupted after epoch 1 and resumed from the saved state: the same histories as an uninterrupted run."""
    def fresh(k=2, seed=3):
        p = TrainParams(epochs=2, batch_size=32, seed=seed, flow_every=2, replicas=k, lr=LR)
        seed_everything(seed)
        loader = ReplicaLoader([loaders(small, seed + j)[0] for j in range(k)])
        state = setup(build_replicas(ModelParams(), 10, seed, k, batched=False), p, CPU)
        return state, loader, loaders(small, seed)[1]

    strip = lambda hs: [[{k: v for k, v in r.row().items() if k != "seconds"} for r in h] for h in hs]  # noqa: E731
    state, loader, heldout = fresh()
    whole = train(state, loader, heldout, "test")

    store = ResumeStore(tmp_path / "train.pt", "key")
    state, loader, heldout = fresh()
    save = store.saver(state, loader)

    def stop_after_first(result):
        save(result)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(state, loader, heldout, "test", on_epoch_end=stop_after_first)
    state, loader, heldout = fresh()
    resumed = train(state, loader, heldout, "test", result=store.restore(state, loader))
    assert strip(resumed.replicas) == strip(whole.replicas) and len(whole.replicas) == 2
    assert [s.step for s in resumed.flow] == [s.step for s in whole.flow]


@pytest.mark.parametrize("key, value, message", [
    ("nproc", 2, "train.replicas: 3 replicas need train.nproc: 1 (got 2)"),
    ("loader", "dataloader", "train.replicas: 3 replicas need train.loader: tensor (got dataloader)"),
    ("compile", True, "train.replicas: 3 replicas need train.compile: false (got true)"),
])
def test_replicas_refuse_what_they_cannot_combine_with(key, value, message):
    with pytest.raises(ParamError) as err:
        parse_params({"train": {"replicas": 3, key: value}})
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("key, value, message", [
    ("amp", "fp16", "train.replicas: 2 replicas need train.amp: none or bf16 (got fp16"),
    ("channels_last", True, "train.replicas: 2 replicas need train.channels_last: false (got true)"),
])
def test_replicas_refuse_a_shared_loss_scale_and_channels_last(key, value, message):
    with pytest.raises(ParamError, match=re.escape(message)):
        parse_params({"train": {"replicas": 2, key: value}})
