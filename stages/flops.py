"""Stage flops: FLOPs and parameters per image of the chosen model, the original study's way."""
from cifar_study.core.flops import flops_report, format_table
from cifar_study.core.model import build_model
from cifar_study.pipeline import paths
from cifar_study.pipeline.outputs import write_json
from cifar_study.pipeline.params import load_params
from cifar_study.pipeline.stage import run_stage

NUM_CLASSES = 10  # CIFAR-10; the count does not depend on the data, so data changes never re-run this stage


def main() -> None:
    params = load_params()
    report = flops_report(build_model(params.model, NUM_CLASSES))
    write_json(paths.FLOPS_METRICS, {"flops": report["flops"], "gflops": report["gflops"], "params": report["params"]})
    write_json(paths.FLOPS_REPORT, {"model": params.model.name, **report})
    print(format_table(report))


if __name__ == "__main__":
    run_stage(main)
