import functools
import hashlib
import http.server
import multiprocessing
import os
import threading

import numpy as np
import pytest

from cifar_study.pipeline.dataset import fetch, from_folder, load_dataset, save_dataset, split_validation, synthetic
from cifar_study.pipeline import untrusted
from cifar_study.pipeline.errors import DataError, ParamError
from cifar_study.pipeline.params import DataParams, parse_params
from tests.conftest import REAL_ARCHIVE, image_folder_files, python_archive, write_files, write_tar


def assert_same(a, b):
    assert a.classes == b.classes
    for (_, x), (_, y) in zip(a.splits(), b.splits()):
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.labels, y.labels)


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_synthetic_has_cifar_shapes_and_is_reproducible():
    ds = synthetic(seed=3)
    assert ds.train.images.shape == (5000, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.test.images.shape == (1000, 32, 32, 3) and ds.train.labels.dtype == np.int64
    assert np.bincount(ds.train.labels).tolist() == [500] * 10
    assert_same(ds, synthetic(seed=3))
    assert not np.array_equal(ds.train.images, synthetic(seed=4).train.images)


def test_limits_take_a_class_balanced_subset():
    ds = fetch(DataParams(source="synthetic", train_limit=105, test_limit=20))
    assert len(ds.train.labels) == 105 and len(ds.test.labels) == 20
    assert np.bincount(ds.train.labels).tolist() == [11] * 5 + [10] * 5
    assert np.bincount(ds.test.labels).tolist() == [2] * 10


def test_limit_larger_than_the_data_is_refused():
    with pytest.raises(ParamError, match="data.train_limit: 6000 is more than the 5000"):
        fetch(DataParams(source="synthetic", train_limit=6000))


def test_validation_split_is_balanced_and_disjoint(tiny):
    train, val = split_validation(tiny.train, 50, 10, seed=0)
    assert len(val.labels) == 50 and len(train.labels) == 150
    assert np.bincount(val.labels).tolist() == [5] * 10
    rows = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in rows for im in val.images)


def test_canonical_file_round_trip(tmp_path, tiny):
    save_dataset(tiny, tmp_path / "d.npz")
    assert_same(tiny, load_dataset(tmp_path / "d.npz"))
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temporary file left behind


def test_summary_counts_and_channel_stats(tiny):
    s = tiny.summary()
    assert s["train_count"] == 200 and s["test_per_class"]["cat"] == 5
    expected = tiny.train.images.reshape(-1, 3).mean(axis=0) / 255
    assert list(s["mean"].values()) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("layout", ["directory", "tar.gz", "tar.gz with top folder"])
def test_folder_source_reads_image_folders_and_archives(tmp_path, tiny, layout):
    files = image_folder_files(tiny)
    if layout == "directory":
        path = write_files(tmp_path / "imgs", files)
    else:
        prefix = "cifar10/" if "top" in layout else ""
        path = write_tar(tmp_path / "imgs.tar.gz", files, prefix)
    assert_same(from_folder(path), tiny)  # PNG is lossless: pixels identical


def test_folder_source_decodes_jpeg(tmp_path, tiny):
    ds = from_folder(write_files(tmp_path, image_folder_files(tiny, fmt="JPEG")))
    assert ds.train.images.shape == tiny.train.images.shape
    np.testing.assert_array_equal(ds.train.labels, tiny.train.labels)
    # JPEG is lossy, but each image keeps its average colour.
    np.testing.assert_allclose(ds.train.images.mean(axis=(1, 2)), tiny.train.images.mean(axis=(1, 2)), atol=3)


def test_many_images_are_decoded_over_worker_processes_in_order(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(untrusted, "DECODE_CHUNK", 16)  # 250 images: 16 tasks over 2 workers
    monkeypatch.setattr(untrusted.os, "cpu_count", lambda: 2)
    files = image_folder_files(tiny)
    assert_same(from_folder(write_tar(tmp_path / "imgs.tar.gz", files)), tiny)
    # A bad image in a later chunk and another after it: the first in archive order is named.
    names = sorted(n for n in files if n.startswith("train/"))
    files[names[100]] = files[names[180]] = b"not an image"
    with pytest.raises(DataError, match=rf"bad\.tar\.gz:{names[100]}: not a PNG or JPEG image"):
        from_folder(write_tar(tmp_path / "bad.tar.gz", files))
    assert multiprocessing.active_children() == []  # the workers ended with the refusal


def test_download_from_local_http_server(tmp_path, tiny):
    archive = python_archive(tiny, tmp_path / "served" / "cifar-10-python.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
        ds = fetch(DataParams(source="download", url=url, md5=md5(archive)), raw_dir=tmp_path / "raw")
    finally:
        server.shutdown()
    assert_same(ds, tiny)
    assert (tmp_path / "raw" / "cifar-10-python.tar.gz").is_file()


def test_download_from_file_url_and_cached_archive(tmp_path, tiny):
    archive = python_archive(tiny, tmp_path / "cifar-10-python.tar.gz")
    p = DataParams(source="download", url=archive.as_uri(), md5=md5(archive))
    assert_same(fetch(p, raw_dir=tmp_path / "raw"), tiny)
    archive.unlink()  # the kept copy in raw/ is used: no second download
    assert_same(fetch(p, raw_dir=tmp_path / "raw"), tiny)


def test_download_with_wrong_checksum_is_refused_and_deleted(tmp_path, tiny):
    archive = python_archive(tiny, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="md5 is not data.md5=0123"):
        fetch(DataParams(source="download", url=archive.as_uri(), md5="0123" * 8), raw_dir=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()  # no archive, no .part, not even the folder


def test_download_without_network_says_how_to_use_a_local_copy(tmp_path):
    with pytest.raises(DataError, match="could not download .* data.source: folder"):
        fetch(DataParams(source="download", url="http://127.0.0.1:9/cifar-10-python.tar.gz"), raw_dir=tmp_path)


def test_folder_source_needs_a_path():
    with pytest.raises(ParamError, match="data.path: required"):
        parse_params({"data": {"source": "folder"}})


# Skips only when CIFAR10_JPG is unset and the default copy is absent: a CIFAR10_JPG naming no file fails.
@pytest.mark.skipif(not REAL_ARCHIVE.is_file() and "CIFAR10_JPG" not in os.environ,
                    reason=f"real CIFAR-10 JPEG archive not at {REAL_ARCHIVE} (set CIFAR10_JPG to its path)")
def test_real_cifar10_jpeg_archive():
    ds = fetch(DataParams(source="folder", path=str(REAL_ARCHIVE), train_limit=1000, test_limit=200))
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(ds.train.labels).tolist() == [100] * 10
    mean = ds.summary()["mean"]
    assert mean["red"] == pytest.approx(0.4914, abs=0.02) and mean["blue"] == pytest.approx(0.4465, abs=0.02)


def test_a_size_just_over_the_limit_is_not_reported_as_equal_to_it():
    from cifar_study.pipeline import untrusted
    assert untrusted.larger((64 << 20) + 1, 64 << 20) == "67,108,865 bytes, more than the 67,108,864 bytes (64 MiB)"
    assert untrusted.larger(2 << 20, 1 << 20) == "2 MiB, more than the 1 MiB"
