"""Labelled image datasets from an image folder, a CSV, MNIST-style IDX files or Hugging Face `datasets`."""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from ..checkpoints.io import atomic_path, printable
from ..processing.decoding import IMAGE_SUFFIXES, decode_image, open_checked, pil_to_rgb

FASHION_MNIST = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


MULTI_LABEL_SEPARATOR = ";"  # between the classes of one image in a CSV's label column
SIZE_SAMPLE = 64  # images whose headers decide the typical size: enough for a stable median, read in milliseconds


class ImageSize(NamedTuple):
    height: int
    width: int
    statistic: str  # how it was measured, for the plan


@dataclass
class ImageDataset:
    """Images addressed by index: file paths (decoded on demand) or an in-memory uint8 array.

    `labels` holds N class ids, or for multi-label data an N×C {0, 1} matrix (row i: the classes image i shows).
    """

    labels: np.ndarray
    classes: list[str]
    source: str
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def positives_per_class(self) -> np.ndarray:
        """Images of each class (multi-label: images showing it)."""
        if self.multi_label:
            return self.labels.astype(bool).sum(axis=0)
        return np.bincount(self.labels, minlength=len(self.classes))

    def load(self, index: int) -> Image.Image:
        """The image as RGB, decoded as prediction decodes it; raises ValueError/OSError for an unreadable file."""
        if self.arrays is not None:
            return pil_to_rgb(Image.fromarray(self.arrays[index]))
        return decode_image(self.paths[index])

    def name_of(self, index: int) -> str:
        return str(self.paths[index]) if self.paths is not None else f"{self.source}[{index}]"

    def typical_image_size(self, sample: int = SIZE_SAMPLE, seed: int = 0) -> ImageSize:
        """The median height and width over a seeded sample of the images, read from their headers (no decoding):
        what the HyperRule's resolution rule keys on. Unreadable headers are left out of the sample."""
        if self.arrays is not None:
            return ImageSize(*self.arrays.shape[1:3], f"all {len(self)} images (one array)")
        chosen = np.random.default_rng([seed, len(self)]).permutation(len(self))[:sample]
        sizes = []
        for index in sorted(chosen):
            try:
                with open_checked(self.paths[index], self.paths[index]) as opened:
                    sizes.append((opened.height, opened.width))
            except ValueError:  # unreadable, or beyond the image limits: skipped in training too
                continue
        if not sizes:
            raise ValueError(f"None of {len(chosen)} sampled images of {self.source} could be read.")
        height, width = (int(np.median([size[axis] for size in sizes])) for axis in (0, 1))
        statistic = f"median of {len(sizes)} of {len(self)} images (headers, seed {seed})"
        if len(sizes) < len(chosen):  # the plan's image count includes files that will be skipped: say so
            statistic += (
                f"; {len(chosen) - len(sizes)} of the {len(chosen)} sampled could not be read and will be skipped"
            )
        return ImageSize(height, width, statistic)

    def subset(self, indices: np.ndarray) -> ImageDataset:
        return ImageDataset(
            labels=self.labels[indices],
            classes=self.classes,
            source=self.source,
            paths=[self.paths[i] for i in indices] if self.paths is not None else None,
            arrays=self.arrays[indices] if self.arrays is not None else None,
        )

    def select_classes(self, wanted: list[str]) -> ImageDataset:
        """Only the listed classes (names or indices), relabelled 0…k-1 in the order given."""
        ids = []
        for item in wanted:
            if item in self.classes:
                ids.append(self.classes.index(item))
            elif item.isdigit() and int(item) < len(self.classes):
                ids.append(int(item))
            else:
                raise ValueError(f"Unknown class {item!r} in {self.source}; its classes are {self.classes}.")
        if self.multi_label:  # images showing any of the wanted classes, with only those columns
            subset = self.subset(np.flatnonzero(self.labels[:, ids].any(axis=1)))
            subset.labels = subset.labels[:, ids]
            subset.classes = [self.classes[i] for i in ids]
            return subset
        keep = np.flatnonzero(np.isin(self.labels, ids))
        subset = self.subset(keep)
        remap = {old: new for new, old in enumerate(ids)}
        subset.labels = np.array([remap[int(label)] for label in subset.labels], dtype=np.int64)
        subset.classes = [self.classes[i] for i in ids]
        return subset

    def check_trainable(self) -> None:
        if len(self) == 0:
            raise ValueError(f"{self.source} holds no images.")
        positives = self.positives_per_class()
        if np.count_nonzero(positives) < 2:
            raise ValueError(f"{self.source} has a single class: classification needs at least two.")
        empty = [name for name, count in zip(self.classes, positives) if count == 0]
        if empty:
            shown = ", ".join(repr(name) for name in empty[:5]) + (
                f" … ({len(empty)} in all)" if len(empty) > 5 else ""
            )
            raise ValueError(
                f"{self.source}: classes {shown} have no images, so the model could never learn them (an empty class "
                "folder, or a stray label such as 255 in an IDX file): remove them, or pick classes with --classes."
            )


def from_folder(root: Path, multi_label: bool = False) -> ImageDataset:
    """root/<class name>/<image files>; classes in sorted order. Multi-label: see `_multi_label_folder`."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    for class_dir in class_dirs:  # class names go into config.json and every report: they must be real text
        if printable(class_dir.name) != class_dir.name:
            raise ValueError(
                f"The class folder {printable(class_dir)} has a name that is not UTF-8 text: rename it (the name "
                "becomes the class label)."
            )
    members = [_images_in(class_dir) for class_dir in class_dirs]
    if not any(members):
        raise ValueError(
            f"{root} has no images in class sub-folders: expected {root}/<class>/<image>.jpg (suffixes: "
            f"{', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    if multi_label:
        return _multi_label_folder(root, class_dirs, members)
    labels = [label for label, files in enumerate(members) for _ in files]
    paths = [file for files in members for file in files]
    return ImageDataset(np.array(labels), [d.name for d in class_dirs], str(root), paths=paths)


def _images_in(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _multi_label_folder(root: Path, class_dirs: list[Path], members: list[list[Path]]) -> ImageDataset:
    """One image per path relative to its class folder: `cat/x.jpg` and `dog/x.jpg` are one image showing both.

    The name decides, not the content: copies under one name may be hard links or symlinks, and two different
    photos are never merged because their pixels happen to match. The first class folder's copy is the one read.
    """
    first: dict[Path, Path] = {}
    classes_of: dict[Path, list[int]] = {}
    for label, (class_dir, files) in enumerate(zip(class_dirs, members)):
        for file in files:
            name = file.relative_to(class_dir)
            first.setdefault(name, file)
            classes_of.setdefault(name, []).append(label)
    names = sorted(first)
    labels = np.zeros((len(names), len(class_dirs)), dtype=np.uint8)
    for row, name in enumerate(names):
        labels[row, classes_of[name]] = 1
    return ImageDataset(labels, [d.name for d in class_dirs], str(root), paths=[first[name] for name in names])


def from_csv(path: Path, multi_label: bool = False) -> ImageDataset:
    """A CSV with a header `path,label` (a UTF-8 byte-order mark, as Excel writes, is fine); relative paths are
    relative to the CSV's folder. Multi-label: a label cell lists the image's classes separated by `;`."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        if set(columns) != {"path", "label"}:
            raise ValueError(f"{path} must have exactly the columns 'path,label' (header row), got {columns}.")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if not row["path"] or not row["label"] or None in row:
            raise ValueError(f"{path}, line {line}: every row needs a path and a label, got {list(row.values())}.")
    paths = [(path.parent / row["path"]).resolve() for row in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lists {len(missing)} missing files, e.g. {', '.join(missing[:3])}.")
    if multi_label:
        return ImageDataset(*_multi_hot([row["label"] for row in rows]), str(path), paths=paths)
    several = next((line for line, row in enumerate(rows, start=2) if MULTI_LABEL_SEPARATOR in row["label"]), None)
    if several is not None:
        raise ValueError(
            f"{path}, line {several}: the label {rows[several - 2]['label']!r} lists several classes separated by "
            f"'{MULTI_LABEL_SEPARATOR}': pass --multi-label (in Python, load_dataset(..., multi_label=True)) to "
            "train on multi-label data."
        )
    classes = sorted({row["label"] for row in rows})
    labels = np.array([classes.index(row["label"]) for row in rows])
    return ImageDataset(labels, classes, str(path), paths=paths)


def _multi_hot(cells: list[str]) -> tuple[np.ndarray, list[str]]:
    """`a;b` cells as an N×C {0, 1} matrix over the sorted class names (blanks around names are ignored)."""
    names = [{name.strip() for name in cell.split(MULTI_LABEL_SEPARATOR)} - {""} for cell in cells]
    classes = sorted(set().union(*names))
    column = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(cells), len(classes)), dtype=np.uint8)
    for row, present in enumerate(names):
        labels[row, [column[name] for name in present]] = 1
    return labels, classes


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (MNIST format).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} bytes of data.")
    return body.reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write unsigned bytes as an MNIST-style IDX file (gzip-compressed when `path` ends in .gz), atomically."""
    path = Path(path)
    data = np.ascontiguousarray(array, dtype=np.uint8)
    body = bytes([0, 0, 0x08, data.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in data.shape) + data.tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(body, mtime=0) if path.suffix == ".gz" else body)  # same bytes each time


def from_idx(images_path: Path) -> ImageDataset:
    """MNIST-style files: `*-images-idx3-ubyte[.gz]` with its `*-labels-idx1-ubyte[.gz]` beside it."""
    labels_path = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
    if not labels_path.is_file():
        raise FileNotFoundError(f"No labels file {labels_path} beside {images_path}.")
    images, labels = _read_idx(images_path), _read_idx(labels_path).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels.")
    count = int(labels.max()) + 1
    fashion = "fashion" in str(images_path).lower() and count == 10
    classes = FASHION_MNIST if fashion else [str(i) for i in range(count)]
    return ImageDataset(labels, list(classes), str(images_path), arrays=images)


def from_hf_datasets(path: Path, split: str = "train") -> ImageDataset:
    """A `datasets` directory saved with `save_to_disk` (a Dataset, or a DatasetDict with `split`)."""
    try:
        import datasets
    except ImportError:
        raise ImportError("Reading a Hugging Face dataset needs `pip install datasets`.") from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path} has splits {list(loaded)}, not {split!r}.")
        loaded = loaded[split]
    image_column = next((c for c in ("image", "img", "pixel_values") if c in loaded.column_names), None)
    label_column = next((c for c in ("label", "labels", "fine_label") if c in loaded.column_names), None)
    if image_column is None or label_column is None:
        raise ValueError(f"{path} needs an 'image' and a 'label' column, has {loaded.column_names}.")
    feature = loaded.features[label_column]
    labels = np.array(loaded[label_column], dtype=np.int64)
    classes = list(feature.names) if hasattr(feature, "names") else [str(i) for i in range(int(labels.max()) + 1)]
    arrays = np.stack([np.array(pil_to_rgb(ImageOps.exif_transpose(image))) for image in loaded[image_column]])
    return ImageDataset(labels, classes, str(path), arrays=arrays)


def as_dataset(data: str | os.PathLike | ImageDataset) -> ImageDataset:
    """A dataset object as it is; anything else through `load_dataset`."""
    return data if isinstance(data, ImageDataset) else load_dataset(data)


def load_dataset(source: str | os.PathLike, split: str = "train", multi_label: bool = False) -> ImageDataset:
    """Pick the reader from what `source` is: folder of class folders, .csv, IDX images file, saved `datasets`.

    multi_label: read several classes per image (folder or CSV), as an N×C matrix of labels.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"No dataset at {path}: pass an image folder, a CSV, an IDX images file or a saved dataset."
        )
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            _single_label_only(path, multi_label)
            return from_hf_datasets(path, split)
        return from_folder(path, multi_label)
    if path.suffix.lower() == ".csv":
        return from_csv(path, multi_label)
    if "idx3" in path.name:
        _single_label_only(path, multi_label)
        return from_idx(path)
    raise ValueError(
        f"Cannot tell what kind of dataset {path} is: use a folder, a .csv or an *-images-idx3-ubyte[.gz] file."
    )


def _single_label_only(path: Path, multi_label: bool) -> None:
    if multi_label:
        raise ValueError(
            f"{path} holds one class per image; multi-label data comes as a CSV (labels separated by "
            f"'{MULTI_LABEL_SEPARATOR}') or a folder whose images appear in several class folders."
        )
