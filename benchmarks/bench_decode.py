"""Decode + geometry per image, and serve's per-image preparation, before and after issue 32, in the same run.

    python benchmarks/bench_decode.py [--rounds 15] [--torch-threads N]

Inputs: scikit-image's astronaut, chelsea and coffee photos as JPEG files (quality 90) at 640×480, 1024×768 and
1600×1200, under the default preprocessing (224 px, bicubic) and bit-50's (448 px, bilinear).

- decode + geometry (file → resized, cropped uint8 pixels): the exact processor's path before issue 32 (the
  decoded image as an array, channels first, back to H×W×C and into Pillow to resize, channels first again: kept
  below as `before_geometry`, reproducing that code) against the path every entry point now takes (Pillow
  resizes the decoded image, the crop a view of H×W×C: `EvalTransform.decoded_geometry`). Decode alone is shown
  for scale. The pixels are checked equal.
- serve's preparation of one upload: before, `ServedModel.pixels` normalised each image to float32 on the CPU
  (`before_serve_pixels`); now it hands over uint8 and the batch is normalised once on the model's device (its
  cost per image, for a batch of 32 on this CPU, is shown apart). Bytes per image through the batcher.

Rounds alternate before/after; each figure is the median over rounds of the mean per image.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor
from bigtransfer.processing.decoding import decode_image
from bigtransfer.processing.transform import EvalTransform, _pil_ready, crop_window, resize_output_size
from bigtransfer.serve.model import ServedModel

PHOTOS = ("astronaut", "chelsea", "coffee")
SIZES = ((640, 480), (1024, 768), (1600, 1200))
SETTINGS = {"default (224, bicubic)": {}, "bit-50 (448, bilinear)": {"size": 448, "crop_size": 448, "resample": 2}}
TINY = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_groups=2, embedding_size=8, num_labels=3)
BATCH = 32


# -- the code before issue 32, kept as the baseline ---------------------------------------------------------------
def before_geometry(transform: EvalTransform, path: Path) -> np.ndarray:
    """The exact processor's geometry before issue 32: decoded H×W×C → C×H×W (`to_channels_first`) → H×W×C for
    Pillow → C×H×W (`pil_resize`) → the crop in C×H×W (`center_crop`)."""
    image = np.moveaxis(np.array(decode_image(path)), -1, 0)
    if transform.do_resize:
        height, width = resize_output_size(*image.shape[-2:], transform.size)
        channels_last, _ = _pil_ready(np.moveaxis(image, 0, -1))
        resized = Image.fromarray(channels_last).resize((width, height), resample=transform.resample, reducing_gap=None)
        image = np.moveaxis(np.array(resized), -1, 0)
    if transform.do_center_crop:
        crop_height, crop_width = transform.crop_size["height"], transform.crop_size["width"]
        height, width = image.shape[-2:]
        pad_top, pad_left, top, left = crop_window(height, width, crop_height, crop_width)
        if pad_top or pad_left:
            canvas = np.zeros((image.shape[0], max(height, crop_height), max(width, crop_width)), dtype=image.dtype)
            canvas[:, pad_top : pad_top + height, pad_left : pad_left + width] = image
            image = canvas
        image = image[:, top : top + crop_height, left : left + crop_width]
    return image


def before_serve_pixels(served: ServedModel, data: bytes) -> np.ndarray:
    """`ServedModel.pixels` before issue 32: the uint8 pixels normalised to float32 3×H×W on the CPU, per image."""
    geometry = served.pixels(data)
    return served.transform.normalise_pixels(torch.from_numpy(geometry[None])).numpy()[0]


# -- measuring ------------------------------------------------------------------------------------------------------
def alternating(paths: dict[str, Callable[[object], object]], items: list, rounds: int) -> dict[str, float]:
    """ms per item of each path: a warm block, then `rounds` rounds taking the paths in turn; medians."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for function in paths.values():
        for item in items:
            function(item)
    for round_index in range(rounds):
        order = list(paths.items()) if round_index % 2 == 0 else list(paths.items())[::-1]
        for name, function in order:
            began = time.perf_counter()
            for item in items:
                function(item)
            times[name].append((time.perf_counter() - began) * 1000 / len(items))
    return {name: statistics.median(values) for name, values in times.items()}


def photo_files(folder: Path) -> list[Path]:
    import skimage.data

    files = []
    for name in PHOTOS:
        source = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for width, height in SIZES:
            files.append(folder / f"{name}-{width}x{height}.jpg")
            source.resize((width, height), Image.Resampling.BICUBIC).save(files[-1], quality=90)
    return files


def measure(settings: dict, files: list[Path], model: Path, rounds: int) -> list[str]:
    """The lines of one preprocessing's figures (a tiny model with these settings saved at `model`, for serve)."""
    processor = BitImageProcessor(**settings)
    transform = processor.eval_transform()
    for file in files:
        after = transform.decoded_geometry(decode_image(file))
        assert np.array_equal(np.moveaxis(before_geometry(transform, file), 0, -1), after), file
    geometry = alternating({
        "decode alone": decode_image,
        "before": lambda file: before_geometry(transform, file),
        "after": lambda file: transform.decoded_geometry(decode_image(file)),
    }, files, rounds)  # fmt: skip
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(model)
    processor.save_pretrained(model)
    served = ServedModel(model, "cpu")
    uploads = [file.read_bytes() for file in files]  # as the server receives them
    batch = torch.from_numpy(np.stack([served.pixels(uploads[0])] * BATCH))
    serve = alternating({
        "before": lambda data: before_serve_pixels(served, data),
        "after": served.pixels,
        "batch normalise": lambda _: served.transform.normalise_pixels(batch),
    }, uploads, rounds)  # fmt: skip
    pixels = 3 * served.height * served.width
    return [
        f"  decode + geometry   before {geometry['before']:6.2f}  after {geometry['after']:6.2f}  "
        f"({geometry['before'] / geometry['after']:.2f}x)   decode alone {geometry['decode alone']:6.2f}; "
        f"geometry alone {geometry['before'] - geometry['decode alone']:5.2f} → "
        f"{geometry['after'] - geometry['decode alone']:5.2f}",
        f"  serve, one upload   before {serve['before']:6.2f}  after {serve['after']:6.2f}  (+ "
        f"{serve['batch normalise'] / BATCH:.3f} per image normalising a batch of {BATCH} on the CPU, once per batch)",
        f"  bytes per image through the batcher: before {4 * pixels:,} (float32), after {pixels:,} (uint8)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--torch-threads", type=int, help="torch's CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per image, median of {args.rounds} "
          f"alternating rounds; {len(PHOTOS)} photos × {len(SIZES)} sizes")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        files = photo_files(Path(tmp))
        for index, (settings_name, settings) in enumerate(SETTINGS.items()):
            print(f"\n{settings_name}")
            print("\n".join(measure(settings, files, Path(tmp) / f"model-{index}", args.rounds)))


if __name__ == "__main__":
    main()
