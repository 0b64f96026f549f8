"""Throughput of our image processors against transformers' PIL processor, measured in the same run.

    python benchmarks/bench_processors.py [--repeats 5]

Inputs: 64 real photos from scikit-image, as PIL images at 480×640 and at mixed sizes, and as
JPEG files on disk (decoding included). Prints images/s and ratios (median of --repeats runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: F401  (torchvision shim so that transformers imports)

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "cat", "retina"]


def photos(count: int, mixed: bool) -> list[Image.Image]:
    import skimage.data

    sources = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    sizes = [(640, 480), (500, 375), (1024, 768), (480, 640), (800, 533), (300, 400)] if mixed else [(640, 480)]
    return [sources[i % len(sources)].resize(sizes[i % len(sizes)], Image.BICUBIC) for i in range(count)]


def throughput(processor, images, repeats: int) -> float:
    processor(images[:4], return_tensors="pt")
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        processor(images, return_tensors="pt")
        timings.append(time.perf_counter() - start)
    return len(images) / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from transformers import BitImageProcessorPil

    from bigtransfer import BitImageProcessor, BitImageProcessorFast

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; images/s, median of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for index, image in enumerate(photos(64, mixed=True)):
            files.append(str(Path(tmp) / f"{index}.jpg"))
            image.save(files[-1], quality=90)
        workloads = {
            "64 PIL 480x640": photos(64, mixed=False),
            "64 PIL mixed sizes": photos(64, mixed=True),
            "64 JPEG files mixed": files,
        }
        for settings_name, settings in {
            "default (224, bicubic, CLIP)": {},
            "bit-50 (448, bilinear, 0.5)": dict(
                size=448, crop_size=448, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
            ),
        }.items():
            print(f"\n{settings_name}")
            for workload, images in workloads.items():
                reference = throughput(BitImageProcessorPil(**settings), images, args.repeats)
                exact = throughput(BitImageProcessor(**settings), images, args.repeats)
                fast = throughput(BitImageProcessorFast(**settings), images, args.repeats)
                row = f"  {workload:22s} transformers-PIL {reference:7.1f}  exact {exact:7.1f} ({exact / reference:4.2f}x)"
                row += f"  fast {fast:7.1f} ({fast / reference:4.2f}x)"
                if isinstance(images[0], str):
                    draft = throughput(BitImageProcessorFast(**settings, draft=True), images, args.repeats)
                    row += f"  fast+draft {draft:7.1f} ({draft / reference:4.2f}x)"
                print(row)
    _ = np  # numpy is imported for skimage's arrays


if __name__ == "__main__":
    main()
