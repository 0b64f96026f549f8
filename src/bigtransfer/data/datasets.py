"""Labelled image datasets from an image folder, a CSV, MNIST-style IDX files or Hugging Face `datasets`."""

from __future__ import annotations

import csv
import gzip
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from .._util.files import atomic_path, read_json
from .._util.limits import EnvLimit
from .._util.package import optional_import
from .._util.text import printable
from ..processing.decoding import (
    IMAGE_SUFFIXES,
    decode_image,
    decode_stored_image,
    open_checked,
    pil_to_rgb,
    stored_image_source,
)
from .order import ShuffledOrder

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
CLASSES_ENV = "BIGTRANSFER_MAX_CLASSES"
# Far beyond any image classification label set (ImageNet-21k: 21,843), far below a class list or a head that
# exhausts memory merely by being built: one stray label of 99,999,999,999 made a 23 GB list of class names.
MAX_CLASSES = EnvLimit(CLASSES_ENV, 100_000)


def beyond_class_limit(label: int) -> str | None:
    """Why a class id is no class's (negative, or past MAX_CLASSES), before a class list up to it is built."""
    if label < 0:
        return f"the class id {label} is negative"
    if label >= (limit := MAX_CLASSES()):
        return f"the class id {label:,} is beyond the limit of {limit:,} classes ({CLASSES_ENV})"
    return None


class ImageSize(NamedTuple):
    height: int
    width: int
    statistic: str  # how it was measured, for the plan


class LabelledImages:
    """What training, evaluation and the plan ask of a dataset, whichever reader holds its images: an
    `ImageDataset` (random access) or a `shards.ShardDataset` (WebDataset tar shards, read a shard at a time)."""

    classes: list[str]
    source: str
    # set by `reading.DataReading.load` on what it read: (that DataReading, the seed it held --val-split out with),
    # so that a run file can tell how to read these images again; None for a dataset made otherwise (in code, a subset)
    reading: tuple[Any, int] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def multi_label(self) -> bool:
        raise NotImplementedError

    def positives_per_class(self) -> np.ndarray:
        """Images of each class (multi-label: images showing it)."""
        raise NotImplementedError

    def example(self, index: int) -> tuple[Image.Image, Any]:
        """(the image as RGB, its label: a class id or a multi-hot list); ValueError/OSError when unreadable."""
        raise NotImplementedError

    def name_of(self, index: int) -> str:
        raise NotImplementedError

    def about_to_read(self, indices: Sequence[int]) -> None:
        """The examples the next reads are for: a reader that holds data (shards) may drop what they do not need."""

    def training_order(self, batch_size: int, seed: int) -> Any:
        """What each training step's global batch holds (`order.ShuffledOrder` or `order.LaneOrder`)."""
        raise NotImplementedError

    def resume_identity(self) -> dict[str, Any]:
        """What a resumed run must find unchanged in the data, beyond its classes and size."""
        return {}

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


@dataclass
class ImageDataset(LabelledImages):
    """Images addressed by index: file paths or the rows of a Hugging Face `datasets` table (both decoded on
    demand, in the loading workers), or an in-memory uint8 array.

    `labels` holds N class ids, or for multi-label data an N×C {0, 1} matrix (row i: the classes image i shows).
    """

    labels: np.ndarray
    classes: list[str]
    source: str
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    table: Any = None  # a datasets.Dataset of one column: images read undecoded ({"bytes", "path"})
    image_roots: tuple[Path, ...] = ()  # the folders a table's path-only images may lie in (`contained_image_path`)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def positives_per_class(self) -> np.ndarray:
        if self.multi_label:
            return self.labels.astype(bool).sum(axis=0)
        return np.bincount(self.labels, minlength=len(self.classes))

    def load(self, index: int) -> Image.Image:
        """The image as RGB, decoded as prediction decodes it; raises ValueError/OSError for an unreadable file."""
        if self.arrays is not None:
            return pil_to_rgb(Image.fromarray(self.arrays[index]))
        if self.table is not None:
            return decode_stored_image(self._stored(index), self.name_of(index))
        return decode_image(self.paths[index])

    def example(self, index: int) -> tuple[Image.Image, Any]:
        return self.load(index), self.labels[index].tolist()

    def training_order(self, batch_size: int, seed: int) -> ShuffledOrder:
        return ShuffledOrder(len(self), batch_size, seed)

    def name_of(self, index: int) -> str:
        return str(self.paths[index]) if self.paths is not None else f"{self.source}[{index}]"

    def stored_bytes(self, index: int) -> bytes | None:
        """The image file's bytes as stored (a path's file, or a table's bytes or file); None for array pixels."""
        if self.paths is not None:
            return Path(self.paths[index]).read_bytes()
        if self.table is not None:
            return stored_image_bytes(self._stored(index))
        return None

    def _stored(self, index: int) -> dict:
        """A table's image value; one that holds only a path is read from that file only inside `image_roots`."""
        (stored,) = self.table[int(index)].values()
        if stored.get("bytes") or not stored.get("path"):
            return stored
        return {"bytes": None, "path": contained_image_path(stored["path"], self.image_roots, self.name_of(index))}

    def _header(self, index: int) -> Image.Image:
        """The image opened for its header only (size checked, nothing decoded)."""
        source = stored_image_source(self._stored(index)) if self.table is not None else self.paths[index]
        return open_checked(source, self.name_of(index))

    def typical_image_size(self, sample: int = SIZE_SAMPLE, seed: int = 0) -> ImageSize:
        """The median height and width over a seeded sample of the images, read from their headers (no decoding):
        what the HyperRule's resolution rule keys on. Unreadable headers are left out of the sample."""
        if self.arrays is not None:
            return ImageSize(*self.arrays.shape[1:3], f"all {len(self)} images (one array)")
        chosen = np.random.default_rng([seed, len(self)]).permutation(len(self))[:sample]
        sizes = []
        for index in sorted(chosen):
            try:
                with self._header(index) as opened:
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
            table=self.table.select(indices) if self.table is not None else None,
            image_roots=self.image_roots,
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
        cells = [row["label"] for row in rows]
        present = [{name.strip() for name in cell.split(MULTI_LABEL_SEPARATOR)} - {""} for cell in cells]
        return ImageDataset(*_multi_hot(present), str(path), paths=paths)
    several = next((line for line, row in enumerate(rows, start=2) if MULTI_LABEL_SEPARATOR in row["label"]), None)
    if several is not None:
        raise ValueError(
            f"{path}, line {several}: the label {rows[several - 2]['label']!r} lists several classes separated by "
            f"'{MULTI_LABEL_SEPARATOR}': pass --multi-label (in Python, load_dataset(..., multi_label=True)) to "
            "train on multi-label data."
        )
    classes = class_order({row["label"] for row in rows})
    labels = np.array([classes.index(row["label"]) for row in rows])
    return ImageDataset(labels, classes, str(path), paths=paths)


INTEGER_LABEL = re.compile(r"-?[0-9]+")


def class_order(names: Collection[str]) -> list[str]:
    """Text labels as classes, in order: by value when every one is an integer (0, 3, 9, 12 — not 0, 12, 3, 9 as
    text sorts them, which would put class "12" before "3"), else sorted as text."""
    if all(INTEGER_LABEL.fullmatch(name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def _multi_hot(names: list[set[str]], classes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Each image's set of class names as an N×C {0, 1} matrix over `classes` (default: `class_order`)."""
    classes = classes if classes is not None else class_order(set().union(*names))
    column = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(names), len(classes)), dtype=np.uint8)
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


IMAGE_COLUMNS = ("image", "img", "pixel_values")  # what datasets on the Hub call them, in order of preference
LABEL_COLUMNS = ("label", "labels", "fine_label")
EVAL_SPLITS = ("validation", "valid", "val", "test")  # what evaluation reads from a DatasetDict, in this order


def stored_image_bytes(stored: dict[str, Any]) -> bytes | None:
    """A `datasets` image value's file bytes: its own, else its (checked, `ImageDataset._stored`) local file's;
    None when it has neither."""
    if stored.get("bytes"):
        return stored["bytes"]
    return Path(stored["path"]).read_bytes() if stored.get("path") else None


def contained_image_path(path: str, roots: Sequence[Path], name: str) -> str:
    """The file a `datasets` image value names, when it lies inside one of `roots` (a saved dataset's own folder,
    or the caches `datasets` downloads into). Any other file, and any URL, is refused: a dataset is data, and must
    not make reading it (or `shard`, which copies what it reads into shards) fetch what its author pointed it at.
    `datasets`' save_to_disk embeds images' bytes, so a dataset saved by it never needs an outside path."""
    if "://" not in path and roots:
        resolved = (roots[0] / path).resolve()  # symbolic links and .. followed: where the bytes really are
        if any(resolved.is_relative_to(root.resolve()) for root in roots):
            return str(resolved)
    raise ValueError(
        f"{name} names its image as {printable(path)}, outside {printable(roots[0]) if roots else 'the dataset'}: "
        "only images stored in a dataset, or files inside its folder, are read; save the dataset with its images "
        "embedded (datasets' save_to_disk does so)."
    )


def datasets_library():
    return optional_import("datasets", "Reading a Hugging Face dataset needs `datasets`", "datasets")


def find_column(columns: list[str], given: str | None, candidates: tuple[str, ...], what: str, source: str) -> str:
    if given is not None and given not in columns:
        raise ValueError(f"{source} has no column {given!r}; its columns are {columns}.")
    found = given or next((c for c in candidates if c in columns), None)
    if found is None:
        raise ValueError(f"{source} has no {what} column among {columns}: name it with --{what}-column.")
    return found


def _label_sets(values: list, feature: Any, source: str) -> tuple[np.ndarray, list[str]]:
    """Multi-label rows: a list of ClassLabel ids (`Sequence(ClassLabel)`) or of strings, as an N×C matrix."""
    inner = getattr(feature, "feature", None)
    if inner is None:
        raise ValueError(
            f"{source}: --multi-label needs a column of label lists (Sequence(ClassLabel) or of strings), got {feature}."
        )
    if hasattr(inner, "names"):
        outside = next(((row, i) for row, ids in enumerate(values) for i in ids if not 0 <= i < len(inner.names)), None)
        if outside:  # a cast does not check them: past its names an IndexError, a negative one another class
            raise _no_class(source, *outside, len(inner.names))
        return _multi_hot([{inner.names[i] for i in row} for row in values], list(inner.names))
    if all(isinstance(name, str) for row in values for name in row):
        return _multi_hot([set(row) for row in values])
    raise ValueError(f"{source}: label lists must hold ClassLabel ids or strings, got {feature}.")


def _class_ids(values: list, feature: Any, source: str) -> tuple[np.ndarray, list[str]]:
    """Class ids and names: a ClassLabel's names, strings as a CSV's labels (`class_order`), or plain ints."""
    if hasattr(feature, "feature"):
        raise ValueError(f"{source}: its labels are lists (several classes per image): pass --multi-label.")
    if hasattr(feature, "names"):
        labels, classes = np.array(values, dtype=np.int64), list(feature.names)
    elif values and all(isinstance(value, str) for value in values):
        classes = class_order(set(values))
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[value] for value in values], dtype=np.int64)
    elif all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        labels = np.array(values, dtype=np.int64)
        largest = int(labels.argmax()) if len(labels) else None
        if largest is not None and labels[largest] >= MAX_CLASSES():  # before a class list up to it
            raise ValueError(
                f"{source}, row {largest}: {beyond_class_limit(int(labels[largest]))}: a stray label (fix the row), "
                "or a label set that large (raise the limit)."
            )
        classes = [str(i) for i in range(int(labels.max()) + 1)] if len(labels) else []
    else:
        raise ValueError(f"{source}: labels must be class ids, a ClassLabel or strings, got {feature}.")
    unlabelled = int(np.count_nonzero(labels < 0))
    if unlabelled:  # ClassLabel's -1: a test split published without its labels
        raise ValueError(f"{source} has {unlabelled} rows without a label (-1): pick a labelled split.")
    beyond = np.flatnonzero(labels >= len(classes))
    if len(beyond):  # a ClassLabel's value past its names (a cast does not check them): an IndexError mid-training
        raise _no_class(source, int(beyond[0]), int(labels[beyond[0]]), len(classes))
    return labels, classes


def _no_class(source: str, row: int, label: int, classes: int) -> ValueError:
    return ValueError(
        f"{source}, row {row}: the class id {label} is none of its {classes} classes (0 to {classes - 1})."
    )


def from_hf_dataset(
    dataset: Any,
    source: str,
    image_column: str | None = None,
    label_column: str | None = None,
    multi_label: bool = False,
    image_roots: Sequence[Path] = (),
) -> ImageDataset:
    """A `datasets.Dataset` as an ImageDataset that reads only its label column up front: images stay in the
    Arrow table, undecoded, until a worker decodes one (any sizes, never all in memory). An image held as a path
    only is read when the file lies in `image_roots` (`contained_image_path`)."""
    datasets = datasets_library()
    image_column = find_column(dataset.column_names, image_column, IMAGE_COLUMNS, "image", source)
    label_column = find_column(dataset.column_names, label_column, LABEL_COLUMNS, "label", source)
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(
            f"{source}: column {image_column!r} holds {dataset.features[image_column]}, not images: name the image "
            "column with --image-column."
        )
    read_labels = _label_sets if multi_label else _class_ids
    labels, classes = read_labels(dataset[label_column], dataset.features[label_column], source)
    table = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    return ImageDataset(labels, classes, source, table=table, image_roots=tuple(image_roots))


def _pick_split(splits: list[str], split: str | None, for_eval: bool, source: str) -> str:
    """`split` when given; else "train" for training and validation/test for evaluation, never silently another."""
    option = "--eval-split" if for_eval else "--split"
    if split is not None:
        if split not in splits:
            raise ValueError(f"{source} has splits {splits}, not {split!r}: pick one with {option}.")
        return split
    wanted = EVAL_SPLITS if for_eval else ("train",)
    found = next((name for name in wanted if name in splits), None)
    if found is None and len(splits) == 1:
        found = splits[0]
    if found is None:
        raise ValueError(f"{source} has splits {splits} and none is {' or '.join(wanted)}: pick one with {option}.")
    return found


def _split_of(loaded: Any, source: str, split: str | None, for_eval: bool, **columns: Any) -> ImageDataset:
    """The chosen split of a DatasetDict (a Dataset as it is) as an ImageDataset named with its split."""
    datasets = datasets_library()
    if isinstance(loaded, datasets.DatasetDict):
        split = _pick_split(list(loaded), split, for_eval, source)
        loaded, source = loaded[split], f"{source} [{split}]"
    return from_hf_dataset(loaded, source, **columns)


def from_hf_datasets(path: Path, split: str | None = None, for_eval: bool = False, **columns: Any) -> ImageDataset:
    """A `datasets` directory saved with `save_to_disk` (a Dataset, or a DatasetDict and the split to read);
    `columns`: from_hf_dataset's image_column, label_column, multi_label."""
    # load_from_disk reports a damaged dataset_dict.json, state.json or dataset_info.json without naming it
    for file in (*path.glob("*.json"), *path.glob("*/*.json")):
        read_json(file, "save the dataset again with save_to_disk, or fix the file")
    datasets = datasets_library()
    loaded = datasets.load_from_disk(str(path))
    if split is not None and not isinstance(loaded, datasets.DatasetDict) and split != loaded.split:
        option = "--eval-split" if for_eval else "--split"
        saved_from = f", or {option} {loaded.split} (the split it was saved from)" if loaded.split else ""
        raise ValueError(
            f"{path} is a single dataset, not a DatasetDict of splits, so it has no split {split!r}: drop {option}"
            f"{saved_from}."
        )
    return _split_of(loaded, str(path), split, for_eval, image_roots=(Path(path),), **columns)


def from_hub_dataset(name: str, split: str | None = None, for_eval: bool = False, **columns: Any) -> ImageDataset:
    """A dataset by its name (`food101`, `user/name`): `datasets.load_dataset`, which reads its cache first and
    the Hub when reachable (HF_HUB_OFFLINE=1: the cache only)."""
    datasets = datasets_library()
    try:
        loaded = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as error:
        raise FileNotFoundError(
            f"No dataset at {name!r}: not a local path, and `datasets` could not load it by that name "
            f"({type(error).__name__}: {error}). Pass an image folder, a CSV, an IDX file or a saved dataset; a "
            "name needs the Hub, or the datasets cache when offline (HF_HUB_OFFLINE=1)."
        ) from None
    return _split_of(loaded, f"{name} [{split}]" if split else name, split, for_eval, image_roots=download_folders(),
                     **columns)  # fmt: skip


def download_folders() -> tuple[Path, ...]:
    """Where `datasets` keeps what it downloads for a dataset by name: its own cache (downloads, extracted
    archives) and the Hub's, whose files it fetches with huggingface_hub."""
    from datasets import config
    from huggingface_hub import constants

    return (config.HF_DATASETS_CACHE, config.DOWNLOADED_DATASETS_PATH, config.EXTRACTED_DATASETS_PATH,
            Path(constants.HF_HUB_CACHE))  # fmt: skip


def hold_out(dataset: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """(training, held-out): `fraction` of each class's images, drawn with `seed`, for data without a validation
    split. Disjoint; every class keeps at least one training image."""
    if not isinstance(dataset, ImageDataset):
        raise ValueError(
            f"--val-split cannot hold images out of {dataset.source}: give shards of evaluation data as --eval-data."
        )
    generator = np.random.default_rng(seed)
    held = []
    # multi-label rows show several classes: held out by their first class, so the draw stays one per image
    primary = dataset.labels.argmax(1) if dataset.labels.ndim == 2 else dataset.labels
    for label in range(len(dataset.classes)):
        members = np.flatnonzero(primary == label)
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held += list(generator.permutation(members)[:count])
    held_mask = np.zeros(len(dataset), dtype=bool)
    held_mask[held] = True
    training, evaluation = dataset.subset(np.flatnonzero(~held_mask)), dataset.subset(np.flatnonzero(held_mask))
    evaluation.source = f"{dataset.source}, {len(evaluation)} held out (--val-split {fraction:g}, seed {seed})"
    return training, evaluation
