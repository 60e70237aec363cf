"""`python -m cifar_study.predict`: images of any size in, top classes out; bad files one line and exit 2."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_study.core.loader import make_loader
from cifar_study.core.model import SimpleCNN
from cifar_study.pipeline.checkpoint import save_checkpoint
from cifar_study.pipeline.cli import exit_status
from cifar_study.pipeline.dataset import Split
from cifar_study.predict import load_image, main
from tests.conftest import ROOT

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = SimpleCNN().eval()
    path = tmp_path_factory.mktemp("predict") / "model.pt"
    save_checkpoint(path, model_state=model.state_dict(), model={"name": "simple_cnn", "dropout": 0.5}, train={},
                    classes=CLASSES, mean=MEAN, std=STD, epoch=1, history=[])
    return path, model


def image_file(path, pixels: np.ndarray, fmt: str = "PNG", mode: str = "RGB"):
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


def test_a_32px_image_gets_the_probabilities_the_evaluate_loader_gives(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(load_image(image_file(tmp_path / "a.png", pixels)), pixels)
    loader = make_loader("tensor", Split(pixels[None], np.zeros(1, dtype=np.int64)), MEAN, STD, augment=False,
                         shuffle=False, batch_size=1, seed=0, device=torch.device("cpu"))
    x, _ = next(iter(loader))
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)[0]
    assert main([str(tmp_path / "a.png"), "--model", str(path), "--top", "10"]) == 0
    line = capsys.readouterr().out.strip()
    printed = {name: float(p) / 100 for name, p in re.findall(r"(\w+) ([\d.]+)%", line)}
    assert list(printed) == [CLASSES[i] for i in expected.argsort(descending=True)]
    assert all(abs(printed[CLASSES[i]] - expected[i].item()) < 0.0006 for i in range(10))


@pytest.mark.parametrize("size, fmt, mode", [((640, 480), "JPEG", "RGB"), ((33, 97), "PNG", "RGBA"),
                                             ((8, 8), "PNG", "L"), ((300, 300), "PNG", "P")])
def test_any_size_and_mode_is_cropped_to_its_centre_and_scaled_to_32px(tmp_path, size, fmt, mode):
    w, h = size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    pixels[top:top + side, left:left + side] = 200  # the central square is bright; what the crop drops is black
    out = load_image(image_file(tmp_path / f"x.{fmt.lower()}", pixels, fmt, mode))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.min() > 150, "the crop kept part of the border"


def test_transparent_pixels_are_white_as_on_a_page_not_their_hidden_colour(tmp_path):
    """A PNG's fully transparent pixels still store colours (here red) that no viewer shows; half-transparent
    ones blend with the white a page puts behind them."""
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere, hidden on the left, opaque on the right
    rgba[:, 20:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    out = load_image(tmp_path / "cutout.png").astype(int)
    assert (out[:, :10] == 255).all()  # white where transparent (the columns near the edge blend in the scaling)
    assert (out[:, 22:] == [255, 0, 0]).all()  # red where opaque
    grey = np.full((40, 40, 2), [0, 128], dtype=np.uint8)  # black at half opacity, in a grey+alpha PNG
    Image.fromarray(grey, "LA").save(tmp_path / "shade.png")
    assert np.abs(load_image(tmp_path / "shade.png").astype(int) - 127).max() <= 1


def test_a_photo_stored_sideways_is_turned_upright_by_its_exif_orientation(tmp_path):
    """Phones store a portrait photo as landscape pixels with an EXIF orientation; a viewer shows it upright."""
    upright = np.zeros((64, 64, 3), dtype=np.uint8)
    upright[:32] = 255  # white top half, black bottom half
    stored = Image.fromarray(np.rot90(upright, k=-1).copy())  # turned 90° clockwise: white on the right
    exif = Image.Exif()
    exif[0x0112] = 8  # EXIF Orientation: rotate 90° counter-clockwise to view
    stored.save(tmp_path / "portrait.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "portrait.jpg").astype(int)
    assert out[:8].mean() > 200 and out[-8:].mean() < 50, "not turned upright"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifar_study.predict", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_prints_one_line_per_image(checkpoint, tmp_path):
    path, _ = checkpoint
    files = [image_file(tmp_path / f"{i}.png", np.full((40, 50, 3), 40 * i, dtype=np.uint8)) for i in range(3)]
    proc = run(*map(str, files), "--model", str(path), "--top", "2")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == list(map(str, files))
    assert all(re.fullmatch(r".*: \w+ \d+\.\d%, \w+ \d+\.\d%", line) for line in lines), lines


def bad_files(tmp):
    """One bad input of each kind, by class: not an image, another format, cut short, a bomb, special files."""
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, format="PNG")
    (tmp / "text.png").write_text("hello")
    Image.new("RGB", (16, 16)).save(tmp / "anim.gif", format="GIF")
    (tmp / "cut.png").write_bytes(good.getvalue()[:60])
    Image.new("1", (10000, 10000)).save(tmp / "bomb.png", format="PNG")  # 100 MP in about 12 KB: PIL's limit
    Image.new("1", (8000, 7000)).save(tmp / "big.png", format="PNG")  # 56 MP: under PIL's limit, over ours
    os.mkfifo(tmp / "fifo.png")
    (tmp / "folder.png").mkdir()
    return {
        "text.png": r"text.png: not a PNG or JPEG image$",
        "anim.gif": r"anim.gif: not a PNG or JPEG image$",
        "cut.png": r"cut.png: not a readable PNG or JPEG image \(.+\)$",
        "bomb.png": r"bomb.png: more than the 50,000,000 pixels allowed$",
        "big.png": r"big.png: 8000x7000, more than the 50,000,000 pixels allowed$",
        "fifo.png": r"fifo.png is a FIFO \(named pipe\), not a regular file$",
        "folder.png": r"folder.png is a directory, not a regular file$",
        "missing.png": r"missing.png does not exist$",
    }


def one_line_exit_2(capsys, *args: str) -> str:
    code = exit_status(lambda: main(list(args)))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and out == "", err
    return lines[0]


def test_bad_images_are_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    good = image_file(tmp_path / "good.png", np.zeros((32, 32, 3), dtype=np.uint8))
    for name, message in bad_files(tmp_path).items():
        line = one_line_exit_2(capsys, str(good), str(tmp_path / name), "--model", str(path))
        assert re.search(r"^error: .*" + message, line), (name, line)


def test_bad_model_and_top_are_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    good = str(image_file(tmp_path / "good.png", np.zeros((32, 32, 3), dtype=np.uint8)))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    cases = {("--model", str(tmp_path / "none.pt")): r"none.pt: checkpoint not found",
             ("--model", str(tmp_path / "junk.pt")): r"junk.pt: not a loadable checkpoint",
             ("--model", str(path), "--top", "11"): r"--top: 11 must be between 1 and the model's 10 classes"}
    for args, message in cases.items():
        assert re.search(message, one_line_exit_2(capsys, good, *args))


def test_a_bad_image_is_answered_before_pytorch_loads(tmp_path):
    """Images are checked before the model: PyTorch's import takes seconds, a misspelt file name none."""
    (tmp_path / "block" / "torch").mkdir(parents=True)
    (tmp_path / "block" / "torch" / "__init__.py").write_text("raise ImportError('PyTorch imported first')\n")
    proc = subprocess.run([sys.executable, "-m", "cifar_study.predict", str(tmp_path / "missing.png")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "block")})
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'missing.png'} does not exist\n", proc.stderr
