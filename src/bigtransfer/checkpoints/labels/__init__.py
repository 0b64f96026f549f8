"""Class names of the datasets BiT heads were trained on, shipped with the package (see scripts/make_label_files.py)."""

from __future__ import annotations

import functools
import gzip
from importlib.resources import files

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _read_tsv(name: str) -> list[str]:
    data = (files(__package__) / name).read_bytes()
    text = gzip.decompress(data).decode() if name.endswith(".gz") else data.decode()
    return [line.split("\t", 1)[1] for line in text.splitlines()]


@functools.cache
def imagenet1k() -> list[str]:
    """ILSVRC-2012 class names in BiT/timm/transformers order (e.g. 281 → 'tabby, tabby cat')."""
    return _read_tsv("imagenet1k.tsv")


@functools.cache
def imagenet21k() -> list[str]:
    """The 21,843 ImageNet-21k class names in the order of BiT-M upstream heads."""
    return _read_tsv("imagenet21k.tsv.gz")


def id2label_for(num_labels: int, dataset: str | None = None) -> dict[int, str] | None:
    """Names for a head of this size: by dataset when known, else ImageNet-1k/-21k by class count."""
    names = {"cifar10": CIFAR10, "imagenet1k": None, "imagenet21k": None}.get(dataset or "")
    if names is None and (dataset == "imagenet1k" or (dataset is None and num_labels == 1000)):
        names = imagenet1k()
    if names is None and (dataset == "imagenet21k" or (dataset is None and num_labels == 21843)):
        names = imagenet21k()
    if names is None or len(names) != num_labels:
        return None
    return dict(enumerate(names))
