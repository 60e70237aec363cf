"""Classify image files with the trained model: each file's top classes and their probabilities.

    python -m cifar_study.predict IMAGE [IMAGE ...] [--model models/model.pt] [--top 3]

Any PNG or JPEG of any size: it is turned upright (its EXIF orientation), converted to RGB (transparent
pixels as white, as on a page), cropped to its central square and scaled to 32x32 with an antialiasing
filter (CIFAR-10's images are small photos scaled the same way), then normalised with the mean and std
stored in the checkpoint, as the training data was. The model is the checkpoint's (replica 0 of a
`train.replicas` run), on the CPU. Prints one line per image;
exit 0, or 2 with one line naming the file on a bad image or checkpoint.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar_study.core.cifar10 import IMAGE_SIZE
from cifar_study.pipeline import paths
from cifar_study.pipeline.cli import Parser, emit, printable, run_command, whole_number
from cifar_study.pipeline.dataset import Split
from cifar_study.pipeline.errors import CheckpointError, DataError, UserError, first_line
from cifar_study.pipeline.untrusted import IMAGE_FORMATS, read_bounded

if TYPE_CHECKING:
    import torch

MAX_IMAGE_BYTES = 64 << 20
MAX_PIXELS = 50_000_000  # a 50-megapixel photo; a larger header is a decompression bomb, refused unread
PREDICT_BATCH = 256


def load_image(path: str | Path) -> np.ndarray:
    """`path` as a (32, 32, 3) uint8 array: central square, scaled down (or up) to 32x32."""
    data = read_bounded(path, MAX_IMAGE_BYTES)  # a FIFO, device or directory is refused unopened
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's notes on a damaged EXIF block and the like: not the user's business
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{path}: {im.width}x{im.height}, more than the {MAX_PIXELS:,} pixels allowed")
                # An animated PNG's frames may differ; a phone's JPEG (MPO) also has frames, but its first is the photo
                if im.format == "PNG" and getattr(im, "is_animated", False):
                    raise DataError(f"{path}: an animated PNG ({im.n_frames} frames); give one frame as its own image")
                if im.mode.startswith(("I", "F")):  # PIL's conversion to RGB clips 16-bit and float pixels to white
                    raise DataError(f"{path}: {im.mode} pixels (16-bit or floating point); convert it to an 8-bit image")
                # Upright as a viewer shows it: a phone stores a portrait photo sideways, with an EXIF orientation
                upright = ImageOps.exif_transpose(im)
                side = min(upright.size)
                left, top = (upright.width - side) // 2, (upright.height - side) // 2
                if upright.has_transparency_data:  # as a viewer shows it on a white page, not the hidden colours
                    upright = Image.alpha_composite(Image.new("RGBA", upright.size, "white"), upright.convert("RGBA"))
                square = upright.convert("RGB").crop((left, top, left + side, top + side))
                return np.asarray(square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        raise DataError(f"{path}: not a PNG or JPEG image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # PIL's own limit, before ours
        raise DataError(f"{path}: more than the {MAX_PIXELS:,} pixels allowed") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable PNG or JPEG image ({first_line(exc)})") from None


def predict(model: torch.nn.Module, images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """Class probabilities, one row per (N, 32, 32, 3) uint8 image, normalised by evaluate's own loader."""
    import torch

    from cifar_study.core.loader import make_loader

    split = Split(images, np.zeros(len(images), dtype=np.int64))
    # In batches of 256: one batch of 2,000 images peaked at 1,833 MiB of RSS, in batches 747 MiB (541 MiB before).
    loader = make_loader("tensor", split, mean, std, augment=False, shuffle=False, batch_size=PREDICT_BATCH, seed=0,
                         device=torch.device("cpu"))
    with torch.inference_mode():
        return torch.cat([torch.softmax(model(x).float(), dim=1) for x, _ in loader])


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m cifar_study.predict", description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    ap.add_argument("--model", default=paths.CHECKPOINT, help=f"a checkpoint of the train stage (default {paths.CHECKPOINT})")
    ap.add_argument("--top", type=whole_number, default=3, help="classes to print per image (default 3)")
    args = ap.parse_args(argv)
    # Every file checked before any is classified, and before PyTorch loads (seconds): a wrong name is
    # answered at once.
    images = np.stack([load_image(p) for p in args.images])
    from cifar_study.pipeline.checkpoint import load_checkpoint, model_from_checkpoint

    state = load_checkpoint(args.model)
    classes = state["classes"]
    if not 1 <= args.top <= len(classes):
        raise UserError(f"--top: {args.top} must be between 1 and the model's {len(classes)} classes")
    model = model_from_checkpoint(state)
    probabilities = predict(model, images, state["mean"], state["std"])
    if not probabilities.isfinite().all():  # finite weights and normalisation can still overflow
        raise CheckpointError(f"{args.model}: the model's outputs are not finite numbers (its weights, mean or "
                              "std are out of any trained model's range): run dvc repro train")
    top = probabilities.topk(args.top, dim=1)
    emit("\n".join(f"{printable(path)}: " + ", ".join(f"{classes[i]} {v:.1%}" for v, i in zip(values, indices))
                   for path, values, indices in zip(args.images, top.values.tolist(), top.indices.tolist())))
    return 0


if __name__ == "__main__":
    run_command(main)
