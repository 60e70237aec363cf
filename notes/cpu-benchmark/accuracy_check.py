"""Does a speed option change what the model learns? One epoch per configuration on the same data,
same seed, test accuracy side by side (fp32 reference first).

    python notes/cpu-benchmark/accuracy_check.py --data data/raw/cifar10-jpg.tar.gz [--epochs 1] [--device cpu]

--data is an image folder / tar (data.source: folder), or 'synthetic'.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cifar_study.core.evaluation import evaluate  # noqa: E402
from cifar_study.core.loader import make_loader  # noqa: E402
from cifar_study.core.model import SimpleCNN  # noqa: E402
from cifar_study.core.runtime import resolve_device, seed_everything  # noqa: E402
from cifar_study.core.training import setup, train  # noqa: E402
from cifar_study.pipeline.dataset import channel_stats, fetch  # noqa: E402
from cifar_study.pipeline.params import DataParams, TrainParams  # noqa: E402
from cifar_study.pipeline.cli import Parser  # noqa: E402

CONFIGS = {
    "fp32 (default)": {},
    "bf16 + channels_last": {"amp": "bf16", "channels_last": True},
}


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench/results/accuracy_check.json")
    args = ap.parse_args()
    source = "synthetic" if args.data == "synthetic" else "folder"
    ds = fetch(DataParams(source=source, path="" if source == "synthetic" else args.data))
    device = resolve_device(args.device)
    mean, std = channel_stats(ds.train.images)
    results = {}
    for name, options in CONFIGS.items():
        p = TrainParams(epochs=args.epochs, **options)
        seed_everything(p.seed)
        train_loader = make_loader(p.loader, ds.train, mean, std, augment=True, shuffle=True, batch_size=p.batch_size,
                                   seed=p.seed, device=device)
        test_loader = make_loader(p.loader, ds.test, mean, std, augment=False, shuffle=False, batch_size=1000, seed=p.seed,
                                  device=device)
        model = SimpleCNN()
        started = time.perf_counter()
        history = train(setup(model, p, device), train_loader, test_loader, "test").history
        seconds = time.perf_counter() - started
        test = evaluate(model, test_loader, device)  # fp32 evaluation, as the evaluate stage does
        results[name] = {"test_acc": test.acc, "train_loss": history[-1].train_loss, "seconds": seconds}
        print(f"{name}: test accuracy {test.acc:.4f}, train loss {history[-1].train_loss:.4f}, {seconds:.0f}s",
              flush=True)
    reference = results["fp32 (default)"]["test_acc"]
    for name, r in results.items():
        print(f"  {name:<24} test acc {r['test_acc']:.2%}  ({(r['test_acc'] - reference) * 100:+.2f} points vs fp32)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "epochs": args.epochs, "device": str(device),
                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
