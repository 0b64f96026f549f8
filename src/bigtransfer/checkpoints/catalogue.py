"""The models that load by name, as plain data: Google's released BiT checkpoints (where they live, their
architecture, label set and evaluation preprocessing, how well they do) and the models shipped in the package.

Both the weight loaders and the image processors read this table explicitly; nothing registers itself here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

BASE_URL_ENV = "BIGTRANSFER_BIT_BASE_URL"
DEFAULT_BASE_URL = "https://storage.googleapis.com/bit_models/"
ARCHITECTURES = {  # depths, width factor
    "R50x1": ([3, 4, 6, 3], 1),
    "R50x3": ([3, 4, 6, 3], 3),
    "R101x1": ([3, 4, 23, 3], 1),
    "R101x3": ([3, 4, 23, 3], 3),
    "R152x2": ([3, 8, 36, 3], 2),
    "R152x4": ([3, 8, 36, 3], 4),
}


def architecture_of(config) -> str | None:
    """The BiT architecture (R50x1 … R152x4) a config builds, from its shape rather than its name; None for others."""
    if config.layer_type != "preactivation":
        return None
    for name, (depths, width_factor) in ARCHITECTURES.items():
        if list(config.depths) == depths and config.width_factor == width_factor:
            return name
    return None


# Measured ILSVRC-2012 top-1 of the released BiT-M → ILSVRC-2012 fine-tunes (timm's results table).
ILSVRC2012_TOP1 = {"R50x1": 80.39, "R101x1": 82.33, "R50x3": 83.98, "R101x3": 84.43, "R152x2": 84.47, "R152x4": 84.94}
# Exact file sizes where published (timm's docs metadata for the ILSVRC-2012 fine-tunes).
ILSVRC2012_BYTES = {
    "R50x1": 102_242_668, "R50x3": 869_321_580, "R101x1": 178_256_468,
    "R101x3": 1_551_830_100, "R152x2": 945_476_668, "R152x4": 3_746_270_104,
}  # fmt: skip


@dataclass(frozen=True)
class Preprocessing:
    """A release's evaluation preprocessing as published: resize to `size` (the shorter side, or both sides when
    `square`), center-crop to `crop` (None: no crop), with Pillow filter `resample` (2 bilinear, 3 bicubic), values
    in [-1, 1]. processing/record.py (`zoo_settings`) turns it into processor settings."""

    size: int
    crop: int | None
    resample: int
    square: bool = False


@dataclass(frozen=True)
class ZooEntry:
    name: str
    file: str  # path under the base URL
    architecture: str
    upstream: str
    num_labels: int
    label_set: str
    preprocessing: Preprocessing
    top1: float | None = None  # on the dataset of the head, where published
    size_bytes: int | None = None
    sha256: str | None = None
    notes: str = field(default="", compare=False)

    @property
    def url(self) -> str:
        return os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL).rstrip("/") + "/" + self.file

    @property
    def parameters(self) -> int:
        depths, width_factor = ARCHITECTURES[self.architecture]
        return preactivation_parameter_count(depths, width_factor, self.num_labels)


def preactivation_parameter_count(depths: list[int], width_factor: int, num_labels: int) -> int:
    """Parameters of a BiT ResNet-v2 (3-channel input), counted without building it (the zoo lists 30). BiT's
    widths are multiples of 64, so no rounding to a multiple of 8 is needed."""
    in_channels = 64 * width_factor
    total = 7 * 7 * 3 * in_channels
    for stage, depth in enumerate(depths):
        out = 256 * 2**stage * width_factor
        mid = out // 4
        total += in_channels * out  # projection shortcut of the first block
        for block in range(depth):
            block_in = in_channels if block == 0 else out
            total += 2 * block_in + block_in * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * out
        in_channels = out
    return total + 2 * in_channels + (in_channels + 1) * num_labels


UPSTREAM_224 = Preprocessing(size=256, crop=224, resample=2)  # timm: 224 px at crop_pct 0.875, bilinear


def _build() -> dict[str, ZooEntry]:
    entries = []
    for arch in ARCHITECTURES:
        entries.append(
            ZooEntry(f"BiT-S-{arch}", f"BiT-S-{arch}.npz", arch, "ILSVRC-2012", 1000, "imagenet1k", UPSTREAM_224)
        )
        entries.append(
            ZooEntry(f"BiT-M-{arch}", f"BiT-M-{arch}.npz", arch, "ImageNet-21k", 21843, "imagenet21k", UPSTREAM_224)
        )
        resolution = 480 if arch == "R152x4" else 448
        entries.append(
            ZooEntry(
                f"BiT-M-{arch}-ILSVRC2012", f"BiT-M-{arch}-ILSVRC2012.npz", arch, "ImageNet-21k → ILSVRC-2012",
                1000, "imagenet1k", Preprocessing(resolution, resolution, 2), ILSVRC2012_TOP1[arch],
                ILSVRC2012_BYTES[arch],
            )
        )  # fmt: skip
    entries += [
        ZooEntry(
            "BiT-M-R50x1-CIFAR10", "BiT-M-R50x1-CIFAR10.npz", "R50x1", "ImageNet-21k → CIFAR-10", 10, "cifar10",
            Preprocessing(128, None, 2, square=True), 97.61, notes="eval: square resize to 128 (BiT-HyperRule)",
        ),
        ZooEntry(
            "BiT-R50x1-distilled-224", "distill/R50x1_224.npz", "R50x1", "distilled from BiT-M-R152x2 (ILSVRC-2012)",
            1000, "imagenet1k", Preprocessing(256, 224, 3), 82.8,
        ),
        ZooEntry(
            "BiT-R50x1-distilled-160", "distill/R50x1_160.npz", "R50x1", "distilled from BiT-M-R152x2 (ILSVRC-2012)",
            1000, "imagenet1k", Preprocessing(183, 160, 3), 80.5,
        ),
        ZooEntry(
            "BiT-R152x2-teacher-224", "distill/R152x2_T_224.npz", "R152x2", "ImageNet-21k → ILSVRC-2012 (teacher)",
            1000, "imagenet1k", Preprocessing(256, 224, 3), 82.92,
        ),
        ZooEntry(
            "BiT-R152x2-teacher-384", "distill/R152x2_T_384.npz", "R152x2", "ImageNet-21k → ILSVRC-2012 (teacher)",
            1000, "imagenet1k", Preprocessing(384, 384, 3), 83.86,
        ),
    ]  # fmt: skip
    return {entry.name: entry for entry in entries}


ZOO = _build()


def find_entry(name: str) -> ZooEntry | None:
    """Zoo entry for a name (case-insensitive, '.npz' optional), or None."""
    key = str(name).removesuffix(".npz").lower()
    return next((entry for entry in ZOO.values() if entry.name.lower() == key), None)


def entry_for_file(path: str) -> ZooEntry | None:
    """Zoo entry whose file name a local path carries (e.g. '~/Downloads/BiT-M-R50x1.npz')."""
    name = os.path.basename(str(path))
    return next((entry for entry in ZOO.values() if os.path.basename(entry.file) == name), None)


BUNDLED_MODELS = {  # name: what it was pre-trained on (bigtransfer/bundled/README.md)
    "bit-tiny-fashion5": "Fashion-MNIST, 5 classes (in the package)",
    "bit-tiny-glyphs": "printed letters, 39 classes (in the package)",
}


def bundled_model(name: str) -> Path | None:
    """A model shipped inside the package (see bigtransfer/bundled/README.md), by name."""
    if name not in BUNDLED_MODELS:
        return None
    return Path(str(files("bigtransfer") / "bundled" / name))


def known_names() -> list[str]:
    """Every name that loads without a path: the bundled models and the zoo."""
    return [*BUNDLED_MODELS, *ZOO]
