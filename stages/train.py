"""Stage train: the study's training run; writes the checkpoint, per-epoch history and flow data."""
import sys
from pathlib import Path

from cifar_study import distributed, paths
from cifar_study.checkpoint import save_checkpoint
from cifar_study.cli import run_stage
from cifar_study.data import channel_stats, heldout_split, load_dataset
from cifar_study.device import resolve_device, seed_everything
from cifar_study.flops import flops_report
from cifar_study.inputs import md5_file
from cifar_study.io import write_csv, write_json
from cifar_study.loader import make_loader
from cifar_study.model import build_model
from cifar_study.params import load_params
from cifar_study.resume import ResumeStore, fingerprint
from cifar_study.tracking import Tracker, wandb_group
from cifar_study.training import train

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "heldout_loss", "heldout_acc", "lr", "seconds")
FLOW_COLUMNS = ("step", "epoch", "layer", "grad_mean", "grad_max", "weight_mean", "weight_max")


def main() -> None:
    params = load_params()
    p = params.train
    device = resolve_device(p.device)
    dataset = load_dataset(paths.DATA)
    classes = dataset.classes
    train_split, heldout, heldout_name = heldout_split(dataset, params.data)  # checked before ranks start
    if p.nproc > 1 and not distributed.launched():
        sys.exit(distributed.launch(p.nproc, "stages.train", p.batch_size))
    d, device = distributed.init(device, p.batch_size)
    mean, std = channel_stats(train_split.images)
    if d.main:
        print(f"train: {len(train_split.labels)} images on {device} x {d.world} process(es); held-out: "
              f"{heldout_name} split ({len(heldout.labels)} images)", flush=True)

    seed_everything(p.seed + d.rank)  # dropout differs per rank; data order and augmentation come from the loader's seed
    train_loader = make_loader(p.loader, train_split, mean, std, augment=True, batch_size=p.batch_size,
                               seed=p.seed, device=device, num_workers=p.num_workers, rank=d.rank, world=d.world)
    heldout_loader = make_loader(p.loader, heldout, mean, std, augment=False, batch_size=1000,
                                 seed=p.seed, device=device, num_workers=p.num_workers)
    model = build_model(params.model, len(classes))
    # What this run depends on: it keys the resume state and names the W&B group.
    run_key = fingerprint(params.section("model"), params.section("train"), params.data.val_size,
                          params.data.seed, files=(paths.DATA, *paths.code_files()))
    resume = ResumeStore(Path(paths.RESUME), run_key)
    with Tracker(params.wandb, "train", wandb_group(run_key), {"model": params.section("model"),
                 "train": params.section("train"), "data": params.section("data")}, enabled=d.main) as tracker:
        try:
            result = train(model, train_loader, heldout_loader, p, device, heldout_name, tracker, resume, d)
        except KeyboardInterrupt:
            if d.main:
                print(f"train: interrupted; completed epochs are saved in {paths.RESUME}: run the stage again "
                      f"(dvc repro) with the same params to continue", file=sys.stderr)
            raise
        finally:
            distributed.shutdown(d)
        if not d.main:
            return  # rank 0 alone writes the outputs

        save_checkpoint(paths.CHECKPOINT, model_state=model.state_dict(), optimizer_state=result.optimizer_state,
                        model=params.section("model"), train=params.section("train"), classes=classes, mean=mean,
                        std=std, epoch=p.epochs, history=result.history, run_key=run_key,
                        data_md5=md5_file(paths.DATA))
        write_csv(paths.HISTORY, result.history, HISTORY_COLUMNS)
        write_csv(paths.FLOW, [row for snap in result.flow for row in snap.rows()], FLOW_COLUMNS)
        last = result.history[-1]
        metrics = {
            "epochs": p.epochs, "heldout_split": heldout_name,
            "train_loss": round(last["train_loss"], 6), "train_acc": round(last["train_acc"], 6),
            "heldout_loss": round(last["heldout_loss"], 6), "heldout_acc": round(last["heldout_acc"], 6),
            "best_heldout_acc": round(max(r["heldout_acc"] for r in result.history), 6),
        }
        write_json(paths.TRAIN_METRICS, metrics)
        resume.clear()  # every output is written: nothing left to resume
        flops = flops_report(build_model(params.model, len(classes)))
        tracker.summary({**metrics, "gflops_per_sample": flops["gflops"], "flops_per_sample": flops["flops"],
                         "params": flops["params"]})


if __name__ == "__main__":
    run_stage(main)
