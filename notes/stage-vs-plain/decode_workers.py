"""Decoding the 60,000 JPEGs of the archive in one process against two worker processes
(cifar_study.pipeline.untrusted.decode_images), twice each, as measured for
notes/2026-11-28-stage-vs-plain.md; then the first bad image of two is the one named.

    python notes/stage-vs-plain/decode_workers.py data/raw/cifar10-jpg.tar.gz
"""
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cifar_study.pipeline import untrusted  # noqa: E402

if __name__ == "__main__":  # worker processes import this file: only the parent measures
    with tarfile.open(sys.argv[1]) as tar:
        files = [(tar.extractfile(m).read(), m.name) for m in tar if m.isreg() and m.name.endswith(".jpg")]
    for workers in (1, 2, 1, 2):
        started = time.perf_counter()
        images = untrusted.decode_images(files, workers)
        print(f"{workers} worker(s): {images.shape} in {time.perf_counter() - started:.1f} s")
    bad = files[:5000] + [(b"garbage", "x/bad1.jpg")] + files[:3000] + [(b"garb", "x/bad2.jpg")]
    try:
        untrusted.decode_images(bad, 2)
    except untrusted.DataError as exc:
        print(f"refused: {exc}")
