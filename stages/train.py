"""Stage train: the study's training run; writes the checkpoint, per-epoch history and flow data."""
import sys
from pathlib import Path

from cifar_study.analysis.stats import replica_spread
from cifar_study.core import distributed
from cifar_study.core.flow import COLUMNS as FLOW_COLUMNS
from cifar_study.core.history import EpochRecord
from cifar_study.core.loader import make_loader
from cifar_study.core.model import build_model
from cifar_study.core.replicas import ReplicaLoader, batched_on, build_replicas
from cifar_study.core.runtime import Phases, resolve_device, seed_everything
from cifar_study.core.training import setup, train
from cifar_study.observe.live import FanOut, LiveLogger
from cifar_study.observe.wandb_run import Tracker, wandb_group
from cifar_study.pipeline import paths
from cifar_study.pipeline.checkpoint import model_payload, replica_payload, save_checkpoint
from cifar_study.pipeline.dataset import heldout_split, load_dataset, normalization
from cifar_study.pipeline.outputs import after_outputs, write_csv, write_json
from cifar_study.pipeline.params import load_params
from cifar_study.pipeline.resume import ResumeStore
from cifar_study.pipeline.run_key import run_key
from cifar_study.pipeline.stage import run_stage
from cifar_study.pipeline.untrusted import md5_file


def main() -> None:
    phases = Phases("train")
    params = load_params()
    p = params.train
    device = resolve_device(p.device)
    dataset = load_dataset(paths.DATA)
    classes = dataset.classes
    train_split, heldout, heldout_name = heldout_split(dataset, params.data)  # checked before ranks start
    if p.nproc > 1 and not distributed.launched():
        if code := distributed.launch(p.nproc, "stages.train"):
            sys.exit(code)
        return  # the ranks wrote the outputs; run_stage still reports a stdout that failed
    d, device = distributed.init(device, p.batch_size)
    mean, std = normalization(p.normalize, train_split.images)  # the checkpoint keeps both, and its train.normalize
    if d.main:
        print(f"train: {len(train_split.labels)} images on {device} x {d.world} process(es); held-out: "
              f"{heldout_name} split ({len(heldout.labels)} images)", flush=True)

    seed_everything(p.seed + d.rank)  # dropout differs per rank; data order and augmentation come from the loader's seed
    seeds = [p.seed + j for j in range(p.replicas)]  # replica j is the run seeded with train.seed + j
    loaders = [make_loader(p.loader, train_split, mean, std, augment=True, shuffle=True, batch_size=p.batch_size,
                           seed=seed, device=device, num_workers=p.num_workers, rank=d.rank, world=d.world)
               for seed in seeds]
    train_loader = loaders[0] if p.replicas == 1 else ReplicaLoader(loaders)
    heldout_loader = make_loader(p.loader, heldout, mean, std, augment=False, shuffle=False, batch_size=1000,
                                 seed=p.seed, device=device, num_workers=p.num_workers)
    model = build_model(params.model, len(classes)) if p.replicas == 1 else \
        build_replicas(params.model, len(classes), p.seed, p.replicas, batched=batched_on(device))
    key = run_key(params)  # keys the resume state and names the W&B group
    resume = ResumeStore(Path(paths.RESUME), key)
    phases.done("data")  # params, data, loaders, model
    state = setup(model, p, device, d)
    live = LiveLogger(paths.LIVE, enabled=d.main)
    phases.done("setup")
    with Tracker(params.wandb, "train", wandb_group(key), {"model": params.section("model"),
                 "train": params.section("train"), "data": params.section("data")}, enabled=d.main) as tracker:
        tracker.log_model_cost(params.model, len(classes))
        phases.done("wandb_start")
        try:
            result = train(state, train_loader, heldout_loader, heldout_name, FanOut(tracker, live),
                           result=resume.restore(state, train_loader),
                           on_epoch_end=resume.saver(state, train_loader) if d.main else None)
        except KeyboardInterrupt:
            if d.main:
                print(f"train: interrupted; {resume.progress(p.epochs)}: run the stage again "
                      f"(dvc repro) with the same params to continue", file=sys.stderr)
            raise
        finally:
            distributed.shutdown(d)
        if not d.main:
            return  # rank 0 alone writes the outputs
        phases.done("epochs")  # epoch 1 includes torch.compile's compilation and cuDNN's tuning

        # model.pt's weights are replica 0's (the study's seed); Adam's state stays in the resume state
        payload = model_payload(model.state_dict() if p.replicas == 1 else model.replica_state(0), result.history)
        if p.replicas > 1:
            payload.update(replicas=replica_payload(model, seeds, result.replicas))
        save_checkpoint(paths.CHECKPOINT, **payload, model=params.section("model"), train=params.section("train"),
                        classes=classes, mean=mean, std=std, run_key=key, data_md5=md5_file(paths.DATA))
        write_csv(paths.HISTORY, [r.row() for r in result.history], EpochRecord.columns())
        write_csv(paths.FLOW, [row for snap in result.flow for row in snap.rows()], FLOW_COLUMNS)
        metrics = {"heldout_split": heldout_name, **result.history[-1].final_metrics(),
                   "best_heldout_acc": round(max(r.heldout_acc for r in result.history), 6)}
        if p.replicas > 1:
            metrics.update(replicas=p.replicas, **replica_spread({"heldout_acc": [h[-1].heldout_acc for h in result.replicas],
                                                                  "heldout_loss": [h[-1].heldout_loss for h in result.replicas]}))
            tracker.log_replicas(seeds, result.replicas, heldout_name)
        write_json(paths.TRAIN_METRICS, metrics)
        # Once every output is in place (renamed at the stage's end), there is nothing left to resume;
        # if one cannot be written, the resume state keeps the trained epochs for the next run.
        after_outputs(resume.clear)
        after_outputs(live.finish)
        tracker.summary(metrics)
        phases.done("outputs")
    phases.done("wandb_finish")
    print(phases.line(), flush=True)


if __name__ == "__main__":
    run_stage(main)
