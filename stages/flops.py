"""Stage flops: FLOPs and parameters per image of the chosen model, the original study's way."""
from cifar_study import paths
from cifar_study.cli import run_stage
from cifar_study.flops import flops_report, format_table
from cifar_study.io import write_json
from cifar_study.model import build_model
from cifar_study.params import load_params

NUM_CLASSES = 10  # CIFAR-10; the count does not depend on the data, so data changes never re-run this stage


def main() -> None:
    params = load_params()
    report = flops_report(build_model(params.model, NUM_CLASSES))
    write_json(paths.FLOPS_METRICS, {"flops": report["flops"], "gflops": report["gflops"], "params": report["params"]})
    write_json(paths.FLOPS_REPORT, {"model": params.model.name, **report})
    print(format_table(report))


if __name__ == "__main__":
    run_stage(main)
