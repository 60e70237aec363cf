"""Stage fetch_data: CIFAR-10 from data.source into data/cifar10.npz, plus its summary."""
from cifar_study.pipeline import dataset, paths
from cifar_study.pipeline.outputs import write_json
from cifar_study.pipeline.params import load_params
from cifar_study.pipeline.stage import run_stage


def main() -> None:
    params = load_params()
    ds = dataset.fetch(params.data, raw_dir=paths.RAW_DIR)
    dataset.save_dataset(ds, paths.DATA)
    summary = ds.summary()
    write_json(paths.DATA_METRICS, {"train_count": summary["train_count"], "test_count": summary["test_count"]})
    write_json(paths.DATA_REPORT, {"source": params.data.source, **summary})
    print(f"fetch_data: {summary['train_count']} train / {summary['test_count']} test images, "
          f"{summary['classes']} classes, from {params.data.source} -> {paths.DATA}")


if __name__ == "__main__":
    run_stage(main)
