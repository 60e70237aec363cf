"""The CUDA path: loader, mixed precision, compile, evaluation, resume and NCCL on a GPU.

Skipped (with the reason) where PyTorch sees no CUDA device; `bench/gpu_check.sh` runs them on a
GPU machine (`pytest -m cuda`).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cifar_study.core.distributed import Dist
from cifar_study.core.evaluation import evaluate
from cifar_study.core.loader import TensorLoader
from cifar_study.core.model import SimpleCNN
from cifar_study.core.runtime import seed_everything
from cifar_study.core.training import NullLogger, setup, train, train_epoch
from cifar_study.pipeline.dataset import Split
from cifar_study.pipeline.params import TrainParams
from cifar_study.pipeline.resume import ResumeStore
from tests.conftest import ROOT, project, run_stage

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (bench/gpu_check.sh runs these on a GPU machine)")]

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
MEAN, STD = [0.5] * 3, [0.25] * 3
BATCH = 40  # 200 tiny training images: 5 equal batches, so compiled graphs see one training shape
FAST = {"amp": "bf16", "channels_last": True, "compile": True, "compile_mode": "reduce-overhead", "fused_adam": True}


def loaders(tiny, device: torch.device, seed: int = 0, train_cls: type = TensorLoader):
    train_loader = train_cls(tiny.train, MEAN, STD, augment=True, batch_size=BATCH, shuffle=True, seed=seed,
                             device=device)
    heldout = TensorLoader(tiny.test, MEAN, STD, augment=False, batch_size=100, shuffle=False, seed=seed, device=device)
    return train_loader, heldout


@pytest.mark.parametrize("augment", [True, False], ids=["augmented", "plain"])
def test_tensor_loader_on_cuda_gives_the_cpu_batches(tiny, augment):
    def two_epochs(device):
        loader = TensorLoader(tiny.train, MEAN, STD, augment=augment, batch_size=32, shuffle=augment, seed=3,
                              device=device)
        batches = []
        for _ in range(2):
            for x, y in loader:
                assert x.device.type == y.device.type == device.type
                batches.append((x.cpu(), y.cpu()))
        return batches, loader.generator.get_state()

    (cpu, cpu_state), (gpu, gpu_state) = two_epochs(CPU), two_epochs(CUDA)
    assert len(cpu) == len(gpu) == 14  # 200 images in batches of 32, twice
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(yc, yg)
        torch.testing.assert_close(xg, xc, rtol=0, atol=1e-6)
    assert torch.equal(cpu_state, gpu_state)  # resume saves this state: it must not depend on the device
    if augment:
        assert not torch.equal(cpu[0][0], cpu[7][0])  # a new shuffle and augmentation in epoch 2


@pytest.mark.parametrize("options", [
    {"amp": "fp16"}, {"amp": "fp16", "fused_adam": True}, {"amp": "bf16"}, {"channels_last": True},
    {"compile": True}, FAST,
], ids=["fp16-scaler", "fp16-fused-adam", "bf16", "channels_last", "compile", "fastest"])
def test_training_steps_on_cuda_keep_the_loss_finite(tiny, options):
    p = TrainParams(epochs=1, batch_size=BATCH, flow_every=2, device="cuda", **options)
    seed_everything(0)
    model = SimpleCNN()
    before = [t.detach().clone() for t in model.parameters()]
    result = train(setup(model, p, CUDA), *loaders(tiny, CUDA), "test")
    record = result.history[0]
    assert math.isfinite(record.train_loss) and math.isfinite(record.heldout_loss), record
    assert 0 <= record.heldout_acc <= 1
    assert all(t.device.type == "cuda" and torch.isfinite(t).all() for t in model.parameters())
    assert any(not torch.equal(b, a.cpu()) for b, a in zip(before, model.parameters()))  # it trained
    assert [s.step for s in result.flow] == [0, 2, 4]
    for snap in result.flow:
        for grad_mean, grad_max, w_mean, w_max, _ in snap.values:
            assert 0 < w_mean <= w_max < math.inf
            if options.get("amp") != "fp16":  # an fp16 step may overflow: the scaler then skips it
                assert 0 < grad_mean <= grad_max < math.inf


def test_fp16_scaler_is_active_and_its_state_is_kept(tiny):
    p = TrainParams(epochs=1, batch_size=BATCH, flow_every=1000, device="cuda", amp="fp16")
    seed_everything(0)
    run = setup(SimpleCNN(), p, CUDA)
    assert run.scaler.is_enabled()
    loss, _ = train_epoch(run, loaders(tiny, CUDA)[0], 1, NullLogger(), [])
    assert math.isfinite(loss)
    state = run.scaler.state_dict()
    assert 0 < state["scale"] < math.inf and state["_growth_tracker"] >= 0


def test_cuda_graph_evaluation_keeps_every_batch(tiny):
    # compile_mode reduce-overhead replays CUDA graphs, whose outputs the next replay overwrites:
    # evaluate must copy each batch's logits, also in fp32 where .float() would not copy.
    seed_everything(0)
    model = SimpleCNN()
    run = setup(model, TrainParams(compile=True, compile_mode="reduce-overhead"), CUDA)
    loader = TensorLoader(tiny.test, MEAN, STD, augment=False, batch_size=5, shuffle=False, seed=0, device=CUDA)
    graphed, eager = evaluate(run.forward, loader, CUDA), evaluate(model, loader, CUDA)
    torch.testing.assert_close(graphed.logits.softmax(1), eager.logits.softmax(1), rtol=1e-3, atol=1e-4)
    assert graphed.loss == pytest.approx(eager.loss, rel=1e-3)


def test_evaluate_on_cuda_matches_the_cpu(tiny):
    seed_everything(0)
    model = SimpleCNN()
    train(setup(model, TrainParams(epochs=2, batch_size=BATCH, flow_every=1000, device="cpu"), CPU), *loaders(tiny, CPU),
          "test")
    on_cpu = evaluate(model, loaders(tiny, CPU)[1], CPU)
    gpu_model = SimpleCNN()
    gpu_model.load_state_dict(model.state_dict())
    on_gpu = evaluate(gpu_model.to(CUDA), loaders(tiny, CUDA)[1], CUDA)
    # cuDNN may run fp32 convolutions in TF32 (PyTorch's default): close, not bit-equal.
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-2)
    torch.testing.assert_close(on_gpu.logits.softmax(1).cpu(), on_cpu.logits.softmax(1), rtol=0, atol=1e-2)
    assert torch.equal(on_gpu.labels.cpu(), on_cpu.labels)
    assert int((on_gpu.predictions() != on_cpu.predictions()).sum()) <= 1
    assert abs(on_gpu.acc - on_cpu.acc) <= 1 / len(on_cpu.labels)


class EpochStartRecorder(TensorLoader):
    """A training loader that records the CUDA RNG state (dropout's stream) as each epoch starts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cuda_states: list[torch.Tensor] = []

    def __iter__(self):
        self.cuda_states.append(torch.cuda.get_rng_state())
        return super().__iter__()


def test_resume_on_cuda_restores_the_cuda_rng_state(tiny, tmp_path):
    def run(epochs: int, state_file: str, scramble: bool = False):
        p = TrainParams(epochs=epochs, batch_size=BATCH, flow_every=1000, device="cuda")
        seed_everything(p.seed)
        train_loader, heldout = loaders(tiny, CUDA, p.seed, EpochStartRecorder)
        model = SimpleCNN()
        if scramble:  # a resumed run must not depend on the streams it starts with
            torch.manual_seed(12345)
            scrambled.append(torch.cuda.get_rng_state())
        state, store = setup(model, p, CUDA), ResumeStore(tmp_path / state_file, "k")
        result = train(state, train_loader, heldout, "test", result=store.restore(state, train_loader),
                       on_epoch_end=store.saver(state, train_loader))
        store.wait()  # the last epoch's state is written on a background thread
        return train_loader.cuda_states, result.history

    scrambled: list[torch.Tensor] = []
    full_states, full = run(2, "full.pt")
    run(1, "cut.pt")  # stops after epoch 1, its state saved
    resumed_states, resumed = run(2, "cut.pt", scramble=True)
    assert len(full_states) == 2 and len(resumed_states) == 1  # the resumed run trains epoch 2 only
    assert not torch.equal(scrambled[0], full_states[1])
    assert torch.equal(resumed_states[0], full_states[1])
    for key in ("train_loss", "heldout_loss"):  # cuDNN need not be bit-reproducible: close
        assert getattr(resumed[1], key) == pytest.approx(getattr(full[1], key), rel=1e-2, abs=1e-3)


def test_train_stage_with_nproc_1_under_torchrun_on_cuda(tmp_path):
    repo = project(tmp_path, train={"device": "cuda", "epochs": 1, "nproc": 1})
    code, _, err = run_stage(repo, "fetch_data")
    assert code == 0, err
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                           "-m", "stages.train"], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "images on cuda x 1 process(es)" in proc.stdout
    assert (repo / "models/model.pt").is_file() and (repo / "metrics/train.json").is_file()


def test_nccl_data_parallel_step_under_torchrun():
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                           "-m", "tests.test_cuda"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nccl: DistributedDataParallel on cuda:0, finite loss" in proc.stdout, proc.stdout[-2000:]


class OneRankGroup(Dist):
    """One rank that still takes the data-parallel path: DDP wrapper and NCCL all-reduces."""

    @property
    def active(self) -> bool:
        return True


def nccl_rank() -> None:
    """Run by torchrun (one rank): one epoch through setup/train_epoch with DDP over NCCL."""
    import torch.distributed as dist

    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl")
    try:
        assert dist.get_backend() == "nccl" and dist.get_world_size() == 1
        rng = np.random.default_rng(0)
        split = Split(rng.integers(0, 256, (160, 32, 32, 3), dtype=np.uint8), np.arange(160) % 10)
        loader = TensorLoader(split, MEAN, STD, augment=True, batch_size=BATCH, shuffle=True, seed=0, device=device)
        seed_everything(0)
        run = setup(SimpleCNN(), TrainParams(batch_size=BATCH, flow_every=2, amp="bf16"), device, OneRankGroup())
        assert isinstance(run.forward, torch.nn.parallel.DistributedDataParallel)
        assert run.forward.device_ids == [device.index]
        loss, acc = train_epoch(run, loader, 1, NullLogger(), [])  # its totals are all-reduced over NCCL
        torch.cuda.synchronize()
        assert math.isfinite(loss) and 0 <= acc <= 1
        print(f"nccl: DistributedDataParallel on {device}, finite loss {loss:.4f}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    nccl_rank()
