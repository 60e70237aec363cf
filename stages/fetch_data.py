"""Stage fetch_data: CIFAR-10 from data.source into data/cifar10.npz, plus its summary."""
from cifar_study import data, paths
from cifar_study.cli import run_stage
from cifar_study.io import write_json
from cifar_study.params import load_params


def main() -> None:
    params = load_params()
    dataset = data.fetch(params.data, raw_dir=paths.RAW_DIR)
    data.save_dataset(dataset, paths.DATA)
    summary = dataset.summary()
    write_json(paths.DATA_METRICS, {"train_count": summary["train_count"], "test_count": summary["test_count"]})
    write_json(paths.DATA_REPORT, {"source": params.data.source, **summary})
    print(f"fetch_data: {summary['train_count']} train / {summary['test_count']} test images, "
          f"{summary['classes']} classes, from {params.data.source} -> {paths.DATA}")


if __name__ == "__main__":
    run_stage(main)
