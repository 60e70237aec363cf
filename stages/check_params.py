"""Stage check_params: all of params.yaml validated, even when every other stage is cached.

Every stage validates every section when it runs, but `dvc repro` with nothing to re-run starts no
stage, so a typo in a setting no stage declares (`wandb.mode: ofline`) would pass unnoticed until
the next training run. This stage depends on the whole params.yaml and writes nothing: it re-runs
(in about a second) exactly when a parameter changes, and invalidates no other stage.
"""
from cifar_study.pipeline.params import load_params
from cifar_study.pipeline.stage import run_stage


def main() -> None:
    load_params()
    print("check_params: params.yaml is valid")


if __name__ == "__main__":
    run_stage(main)
