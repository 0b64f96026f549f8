"""Writing WebDataset tar shards (`bigtransfer shard`): from any random-access dataset in a seeded order,
or from a Hugging Face dataset streamed row by row; `shards.py` reads them."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .._util.files import atomic_directory
from .._util.text import printable
from ..processing.decoding import URL_TIMEOUT, decode_stored_image, open_checked, read_bounded
from .datasets import IMAGE_COLUMNS, LABEL_COLUMNS, ImageDataset, datasets_library, find_column
from .shards import FORMAT, MANIFEST, SHARD_NAME, label_of
from .tar_reading import webdataset_library
from .workers import ordered_results, resolve_workers

KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}  # stored as they are when small enough: no re-encoding loss
JPEG_QUALITY = 95  # for images reduced to --max-side


def encode_image(
    stored: bytes | None, load: Callable[[], Image.Image], name: str, max_side: int
) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes, suffix, (height, width)) of one image as a shard stores it: the stored file as it is when it is a
    JPEG or PNG within max_side, else the decoded image (`load()`: EXIF-rotated RGB) with its longer side
    reduced to max_side — a JPEG, or a PNG for pixels held in memory that need no reduction (IDX digits stay
    lossless)."""
    if stored is not None:
        with open_checked(io.BytesIO(stored), name) as opened:
            kept = KEPT_FORMATS.get(opened.format or "")
            if kept and max(opened.size) <= max_side and opened.getexif().get(0x0112, 1) == 1:
                decode_stored_image({"bytes": stored}, name)  # a truncated file passes the header check: decode it
                return stored, kept, (opened.height, opened.width)
    image = load()
    buffer = io.BytesIO()
    if stored is None and max(image.size) <= max_side:
        image.save(buffer, "PNG")
        return buffer.getvalue(), "png", (image.height, image.width)
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue(), "jpg", (image.height, image.width)


def shard_sample(key: str, encoded: tuple[bytes, str, tuple[int, int]], label: Any) -> dict[str, Any]:
    """A sample as a shard holds it; `label`: a class id, or class ids (multi-label). "size" is not written."""
    data, suffix, size = encoded
    fields = (
        {"json": json.dumps({"labels": [int(i) for i in label]})}
        if isinstance(label, list)
        else {"cls": str(int(label))}
    )
    return {"__key__": key, suffix: data, **fields, "size": size}


def skipped_sample(name: str, error: Exception) -> dict[str, Any]:
    return {"skipped": name, "error": str(error)}


@dataclasses.dataclass(frozen=True)
class ShardContents:
    """Item k: the encoded samples of shard k (runs in loading workers: decoding and resizing is the work)."""

    dataset: ImageDataset
    order: np.ndarray  # dataset indices in the order they are written
    shard_size: int
    max_side: int

    def __len__(self) -> int:
        return -(-len(self.order) // self.shard_size)

    def __getitem__(self, shard: int) -> list[dict[str, Any]]:
        samples = []
        for index in map(int, self.order[shard * self.shard_size : (shard + 1) * self.shard_size]):
            name = self.dataset.name_of(index)
            try:
                encoded = encode_image(
                    self.dataset.stored_bytes(index), functools.partial(self.dataset.load, index), name, self.max_side
                )
            except (OSError, ValueError) as error:
                samples.append(skipped_sample(name, error))
                continue
            label = self.dataset.labels[index]
            samples.append(
                shard_sample(f"{index:09d}", encoded, np.flatnonzero(label).tolist() if label.ndim else int(label))
            )
        return samples


def write_shards(
    dataset: ImageDataset,
    out: str | os.PathLike,
    *,
    max_side: int = 512,
    shard_size: int = 2000,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write `dataset` as tar shards of `shard_size` images in a seeded random order (so every shard is a
    sample of all classes), longer sides reduced to `max_side`, and `dataset.json`; returns the manifest.

    The folder appears whole or not at all; an existing one is kept unless `overwrite`. Unreadable images are
    left out and listed in the manifest's "skipped". Images are encoded by `workers` processes.
    """
    _check_sizes(max_side, shard_size)
    order = np.random.default_rng([seed, len(dataset)]).permutation(len(dataset))
    contents = ShardContents(dataset, order, shard_size, max_side)
    with ordered_results(contents, resolve_workers(workers)) as shards:
        return write_shard_folder(shards, out, classes=dataset.classes, multi_label=dataset.multi_label,
                                  source=dataset.source, recipe={"seed": seed, "max_side": max_side},
                                  overwrite=overwrite, total=len(dataset), progress=progress)  # fmt: skip


def _check_sizes(max_side: int, shard_size: int) -> None:
    if max_side < 1 or shard_size < 1:
        raise ValueError(f"--max-side and --shard-size must be ≥ 1, got {max_side} and {shard_size}.")


def write_shard_folder(
    shards: Iterable[list[dict[str, Any]]],
    out: str | os.PathLike,
    *,
    classes: list[str],
    multi_label: bool,
    source: str,
    recipe: dict[str, Any],
    overwrite: bool = False,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write each list of samples (`shard_sample`, `skipped_sample`) as the next shard, then `dataset.json`,
    into a folder that appears whole or not at all; returns the manifest. What the manifest says of the samples:
    `classes`, `multi_label`, `source`, and `recipe` (how they were made); `total`: the images expected, for the
    progress bar."""
    wds = webdataset_library()
    names, skipped, heights, widths = [], [], [], []
    class_counts = np.zeros(len(classes), dtype=np.int64)
    bar = tqdm(total=total, unit="image", disable=not progress, desc="shard")
    with atomic_directory(Path(out), overwrite=overwrite) as staging, bar:  # the bar ends before any error's line
        for number, samples in enumerate(shards):
            name = SHARD_NAME.format(number)
            with open(staging / name, "wb") as file:
                writer = wds.TarWriter(file, mtime=0)  # no timestamps: the same data gives the same bytes
                for sample in samples:
                    if "skipped" in sample:
                        skipped.append({"image": sample["skipped"], "error": sample["error"]})
                        continue
                    height, width = sample.pop("size")
                    heights.append(height)
                    widths.append(width)
                    writer.write(sample)
                    class_counts[label_of(sample)] += 1
                writer.close()
            kept = sum("skipped" not in sample for sample in samples)
            names.append({"name": name, "examples": kept, "bytes": (staging / name).stat().st_size})
            bar.update(len(samples))
        if not heights:
            raise ValueError(f"None of the images of {source} could be read.")
        manifest = {
            "format": FORMAT, "written_by": "bigtransfer shard", "source": source, **recipe, "classes": classes,
            "multi_label": multi_label, "examples": len(heights), "class_counts": class_counts.tolist(),
            "image_size": {"height": int(np.median(heights)), "width": int(np.median(widths)),
                           "statistic": f"median of all {len(heights)} images as stored (longer side ≤ {recipe['max_side']})"},
            "shards": names, "skipped": skipped,
        }  # fmt: skip
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


STREAM_BUFFER = 10_000  # rows in the shuffle buffer of a streamed dataset (datasets' default is 1,000)


def stream_shards(
    name: str,
    out: str | os.PathLike,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    multi_label: bool = False,
    max_side: int = 512,
    shard_size: int = 2000,
    seed: int = 0,
    buffer_size: int = STREAM_BUFFER,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """A `datasets` dataset by name, streamed (`streaming=True`: each row read once, nothing kept in the datasets
    cache), written as shards like `write_shards`. The order is `IterableDataset.shuffle(seed, buffer_size)`:
    its data files in a seeded order, rows through a seeded buffer. The labels must be a ClassLabel (or a
    Sequence of one, multi-label): string labels would need every row read before the classes are known."""
    _check_sizes(max_side, shard_size)
    datasets = datasets_library()
    split = split or "train"
    source = f"{name} [{split}]"
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as error:
        raise FileNotFoundError(
            f"Cannot stream {source} ({type(error).__name__}: {error}): streaming reads a dataset on the Hub (or a "
            "local dataset script); for a dataset on disk, drop --streaming."
        ) from None
    features = stream.features or stream._resolve_features().features
    image = find_column(list(features), image_column, IMAGE_COLUMNS, "image", source)
    label = find_column(list(features), label_column, LABEL_COLUMNS, "label", source)
    classes = _class_names(features[label], multi_label, source)
    rows = stream.select_columns([image, label]).cast_column(image, datasets.Image(decode=False))
    rows = rows.shuffle(seed=seed, buffer_size=buffer_size)
    samples = (_streamed_sample(number, row[image], row[label], source, max_side) for number, row in enumerate(rows))
    recipe = {"seed": seed, "max_side": max_side, "streamed": {"shuffle_buffer": buffer_size}}
    return write_shard_folder(_chunks(samples, shard_size), out, classes=classes, multi_label=multi_label, source=source,
                              recipe=recipe, overwrite=overwrite, progress=progress)  # fmt: skip


def _class_names(feature: Any, multi_label: bool, source: str) -> list[str]:
    inner = getattr(feature, "feature", None)
    if multi_label != (inner is not None):
        raise ValueError(
            f"{source}: its labels are {feature}: {'pass' if inner is not None else 'drop'} --multi-label."
        )
    names = getattr(inner if multi_label else feature, "names", None)
    if names is None:
        raise ValueError(
            f"{source}: streaming needs ClassLabel labels (names known before reading), got {feature}; read the "
            "dataset without --streaming, or name another --label-column."
        )
    return list(names)


def _streamed_sample(number: int, stored: dict[str, Any], label: Any, source: str, max_side: int) -> dict[str, Any]:
    """Row `number` of the shuffled stream as a shard sample (its key: the number), or why it was left out."""
    name = f"{source} row {number}"
    try:
        if not isinstance(label, list) and label < 0:
            raise ValueError("it has no label (-1)")
        data = stored.get("bytes") or (hub_file_bytes(stored["path"]) if stored.get("path") else None)
        if data is None:
            raise ValueError("it holds no image bytes")
        encoded = encode_image(data, functools.partial(decode_stored_image, {"bytes": data}, name), name, max_side)
    except (OSError, ValueError) as error:
        return skipped_sample(name, error)
    return shard_sample(f"{number:09d}", encoded, label)


ARCHIVE_PROTOCOLS = ("zip", "tar", "gzip", "bz2", "xz", "zstd", "lz4")  # fsspec links that read the next link only


def hub_file_bytes(path: str) -> bytes:
    """A streamed row's image file, which `datasets` names by its place on the Hub (`hf://…`, inside an archive
    `zip://…::hf://…`): read through fsspec as `datasets` opens it, bounded as `fetch_image` is (bytes and
    seconds). Any other place — a local file, an http(s) URL, another store — is refused: the rows of a dataset
    are data, and must not make `shard` fetch (and copy into its shards) what they point at."""
    import fsspec

    *inner, outer = path.split("::")
    if not outer.startswith("hf://") or any(link.partition("://")[0] not in ARCHIVE_PROTOCOLS for link in inner):
        raise ValueError(f"it names its image as {printable(path)}, not a file of the dataset on the Hub (hf://)")
    deadline = time.monotonic() + URL_TIMEOUT
    with fsspec.open(path, "rb") as file:
        return read_bounded(
            lambda _: file.read(1 << 16), deadline, URL_TIMEOUT, "the Hub answered too slowly: try again"
        )


def _chunks(samples: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
