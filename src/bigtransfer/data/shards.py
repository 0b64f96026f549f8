"""Sharded tar datasets in the WebDataset format: written by `bigtransfer shard`, read with the `webdataset`
library a whole shard at a time.

A shard holds one sample per image: `<key>.jpg` (or `.png`) and its label, `<key>.cls` (a class id, the
WebDataset convention) or, for multi-label data, `<key>.json` {"labels": [ids…]}. `dataset.json` beside the
shards lists them with their counts, the classes and the images' sizes, so a reader knows the dataset's size,
its classes and its typical image size without opening a shard — memory and start-up grow with the number of
shards, not of images. Examples are numbered shard after shard; training visits them in `order.LaneOrder`,
which keeps each step to a few shards.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..checkpoints.io import atomic_directory
from ..processing.decoding import decode_stored_image, open_checked
from .datasets import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    ImageDataset,
    ImageSize,
    LabelledImages,
    datasets_library,
    find_column,
    stored_image_bytes,
)
from .order import MAX_LANES, LaneOrder, lane_count
from .workers import ordered_results, resolve_workers

MANIFEST = "dataset.json"
SHARD_NAME = "shard-{:06d}.tar"
FORMAT = "webdataset"
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}  # stored as they are when small enough: no re-encoding loss
JPEG_QUALITY = 95  # for images reduced to --max-side
HELD_SHARDS = MAX_LANES + 2  # at most, per reading process: every lane's shard, and a step's overlap
RECENT_READS = 8  # a held shard no read among a process's last 8 needed is dropped
TIMEOUT_S = 30  # reading a remote dataset.json


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise ImportError("Reading or writing tar shards needs `pip install webdataset`.") from None
    return webdataset


# -- writing ---------------------------------------------------------------------------------------------------


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
        return write_shard_folder(shards, out, dataset.classes, dataset.multi_label, dataset.source,
                                  {"seed": seed, "max_side": max_side}, overwrite, len(dataset), progress)  # fmt: skip


def _check_sizes(max_side: int, shard_size: int) -> None:
    if max_side < 1 or shard_size < 1:
        raise ValueError(f"--max-side and --shard-size must be ≥ 1, got {max_side} and {shard_size}.")


def write_shard_folder(
    shards: Iterable[list[dict[str, Any]]],
    out: str | os.PathLike,
    classes: list[str],
    multi_label: bool,
    source: str,
    recipe: dict[str, Any],
    overwrite: bool,
    total: int | None,
    progress: bool,
) -> dict[str, Any]:
    """Write each list of samples (`shard_sample`, `skipped_sample`) as the next shard, then `dataset.json`,
    into a folder that appears whole or not at all; returns the manifest. `recipe`: how the samples were made."""
    wds = _webdataset()
    names, skipped, heights, widths = [], [], [], []
    class_counts = np.zeros(len(classes), dtype=np.int64)
    with atomic_directory(Path(out), overwrite=overwrite) as staging:
        bar = tqdm(total=total, unit="image", disable=not progress, desc="shard")
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
                    class_counts[_label_of(sample)] += 1
                writer.close()
            kept = sum("skipped" not in sample for sample in samples)
            names.append({"name": name, "examples": kept, "bytes": (staging / name).stat().st_size})
            bar.update(len(samples))
        bar.close()
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
    return write_shard_folder(
        _chunks(samples, shard_size), out, classes, multi_label, source, recipe, overwrite, None, progress
    )


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
        data = stored_image_bytes(stored)
        if data is None:
            raise ValueError("it holds no image bytes")
        encoded = encode_image(data, functools.partial(decode_stored_image, {"bytes": data}, name), name, max_side)
    except (OSError, ValueError) as error:
        return skipped_sample(name, error)
    return shard_sample(f"{number:09d}", encoded, label)


def _chunks(samples: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _label_of(sample: dict[str, Any]) -> int | list[int]:
    """A sample's class id, or its list of class ids (multi-label), from `.cls` or `.json`."""
    if "cls" in sample:
        return int(sample["cls"])
    labels = json.loads(sample["json"]).get("labels") if "json" in sample else None
    if labels is None:
        raise ValueError(f"Sample {sample.get('__key__')!r} has no label: expected a .cls or a .json with 'labels'.")
    return labels


# -- reading ---------------------------------------------------------------------------------------------------


def looks_like_shards(source: str) -> bool:
    """A folder written by `shard`, a folder of .tar files, or tar URLs/patterns (`…/shard-{000000..000099}.tar`,
    `pipe:…`, `https://…`)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / MANIFEST).is_file() or (any(path.glob("*.tar")) and not any(p.is_dir() for p in path.iterdir()))
    return source.startswith(("pipe:", "http://", "https://")) or bool(re.search(r"\.tar(\}|$|::)", source))


class ShardDataset(LabelledImages):
    """Examples in WebDataset tar shards: counts, classes and sizes from `dataset.json` (or, without one, from
    one pass over the shards); images read a whole shard at a time through `webdataset`. A process holds the
    encoded bytes of the shards its current examples need (`about_to_read`), at most HELD_SHARDS."""

    def __init__(self, urls: list[str], manifest: dict[str, Any], source: str, selection: np.ndarray | None = None):
        self.urls, self.manifest, self.source, self.selection = urls, manifest, source, selection
        self.classes = list(manifest["classes"])
        self.counts = [int(shard["examples"]) for shard in manifest["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._held: collections.OrderedDict[int, list[tuple[bytes, Any, str]]] = collections.OrderedDict()
        self._reads, self._last_read = 0, {}  # `about_to_read` calls, and the last that needed each shard

    def __getstate__(self) -> dict[str, Any]:  # loading workers start with no shard held
        return {**self.__dict__, "_held": collections.OrderedDict(), "_reads": 0, "_last_read": {}}

    def __len__(self) -> int:
        return int(self.starts[-1]) if self.selection is None else len(self.selection)

    @property
    def multi_label(self) -> bool:
        return bool(self.manifest.get("multi_label", False))

    def positives_per_class(self) -> np.ndarray:
        if self.selection is not None or self.manifest.get("class_counts") is None:
            raise ValueError(f"{self.source}: class counts are recorded for the whole set of shards only.")
        return np.asarray(self.manifest["class_counts"], dtype=np.int64)

    def check_trainable(self) -> None:
        if self.manifest.get("class_counts") is not None:
            super().check_trainable()
        elif len(self) == 0 or len(self.classes) < 2:  # some of the shards: the classes they hold are not recorded
            raise ValueError(f"{self.source} holds no images, or a single class.")

    def typical_image_size(self, seed: int = 0) -> ImageSize:
        size = self.manifest["image_size"]
        return ImageSize(int(size["height"]), int(size["width"]), f"{size['statistic']}; from {MANIFEST}")

    def training_order(self, batch_size: int, seed: int) -> LaneOrder:
        if self.selection is not None:
            raise ValueError(f"{self.source}: training reads whole sharded datasets; write a subset with `shard`.")
        return LaneOrder(self.counts, batch_size, seed, lane_count(len(self.counts), batch_size))

    def resume_identity(self) -> dict[str, Any]:
        return {"shards": {url.rsplit("/", 1)[-1]: count for url, count in zip(self.urls, self.counts)}}

    def _locate(self, index: int) -> tuple[int, int]:
        index = int(self.selection[index]) if self.selection is not None else int(index)
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return shard, index - int(self.starts[shard])

    def name_of(self, index: int) -> str:
        shard, offset = self._locate(index)
        return f"{self.urls[shard]}[{offset}]"

    def example(self, index: int) -> tuple[Image.Image, Any]:
        shard, offset = self._locate(index)
        data, label, suffix = self._shard(shard)[offset]
        if self.multi_label:  # class ids → the multi-hot row training and evaluation take
            label = np.isin(np.arange(len(self.classes)), label).astype(int).tolist()
        return decode_stored_image({"bytes": data}, f"{self.urls[shard]}[{offset}].{suffix}"), label

    def about_to_read(self, indices: Sequence[int]) -> None:
        """Drop held shards that none of this process's last RECENT_READS reads needed: a worker that loads parts
        of several micro-batches in turn (`--batch-split`, several chunks) keeps every part's shards, and one that
        follows a single lane keeps its current shard or two, not the last HELD_SHARDS it happened to open."""
        self._reads += 1
        for index in indices:
            self._last_read[self._locate(int(index))[0]] = self._reads
        for shard in [held for held in self._held if self._reads - self._last_read.get(held, 0) >= RECENT_READS]:
            del self._held[shard]

    def _shard(self, shard: int) -> list[tuple[bytes, Any, str]]:
        if shard in self._held:
            self._held.move_to_end(shard)
            return self._held[shard]
        samples = [_image_field(sample) for sample in read_samples(self.urls[shard])]
        if len(samples) != self.counts[shard]:
            raise ValueError(
                f"{self.urls[shard]} holds {len(samples)} samples but {MANIFEST} says {self.counts[shard]}: the shard "
                "changed after the manifest was written; rewrite both with `bigtransfer shard`."
            )
        self._held[shard] = samples
        while len(self._held) > HELD_SHARDS:
            self._held.popitem(last=False)
        return samples

    @property
    def labels(self) -> np.ndarray:
        """Every example's label, read from the shards (evaluation's reference; training never needs them all)."""
        if not hasattr(self, "_labels"):
            rows = [_label_of(sample) for url in self.urls for sample in read_samples(url)]
            self._labels = _label_array(rows, len(self.classes), self.multi_label)
        return self._labels if self.selection is None else self._labels[self.selection]

    def subset(self, indices: np.ndarray) -> ShardDataset:
        """A view of some examples (evaluation split over processes); it reads the same shards."""
        chosen = np.asarray(indices) if self.selection is None else self.selection[np.asarray(indices)]
        return ShardDataset(self.urls, self.manifest, self.source, chosen)

    def select_classes(self, wanted: list[str]) -> ShardDataset:
        if [self.classes[int(w)] if w.isdigit() else w for w in wanted] == self.classes:
            return self
        raise ValueError(f"{self.source}: --classes cannot subset sharded data; shard the classes you want instead.")


def _image_field(sample: dict[str, Any]) -> tuple[bytes, Any, str]:
    for suffix in ("jpg", "jpeg", "png", "webp"):
        if suffix in sample:
            label = _label_of(sample)
            return sample[suffix], label, suffix
    raise ValueError(f"Sample {sample.get('__key__')!r} of {sample.get('__url__')} has no .jpg/.png/.webp image.")


def _label_array(rows: list, classes: int, multi_label: bool) -> np.ndarray:
    if not multi_label:
        return np.asarray(rows, dtype=np.int64)
    labels = np.zeros((len(rows), classes), dtype=np.uint8)
    for row, present in enumerate(rows):
        labels[row, present] = 1
    return labels


def read_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in order: webdataset's tar reader (files, `pipe:` commands, http(s) URLs)."""
    wds = _webdataset()
    return iter(wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()))


def _read_manifest(location: str) -> dict[str, Any] | None:
    """dataset.json at a local path or an http(s) URL; None when there is none."""
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except OSError:
            return None
    path = Path(location)
    return json.loads(path.read_text()) if path.is_file() else None


def _scanned_manifest(urls: list[str], progress: bool) -> dict[str, Any]:
    """Counts, labels and image sizes of shards without a dataset.json, from one pass over them."""
    counts, rows, heights, widths = [], [], [], []
    for url in tqdm(urls, unit="shard", desc=f"counting (no {MANIFEST})", disable=not progress):
        count = 0
        for sample in read_samples(url):
            data, label, suffix = _image_field(sample)
            # an unreadable image still counts (its sample is there): training skips and lists it
            with contextlib.suppress(ValueError), open_checked(io.BytesIO(data), f"{url}[{count}].{suffix}") as opened:
                heights.append(opened.height)
                widths.append(opened.width)
            rows.append(label)
            count += 1
        counts.append(count)
    multi_label = any(isinstance(row, list) for row in rows)
    classes = 1 + max((max(row, default=-1) if multi_label else row) for row in rows) if rows else 0
    labels = _label_array(rows, classes, multi_label)
    return {
        "classes": [str(i) for i in range(classes)], "multi_label": multi_label, "examples": len(rows),
        "class_counts": (labels.sum(axis=0) if multi_label else np.bincount(labels, minlength=classes)).tolist(),
        "image_size": {"height": int(np.median(heights)), "width": int(np.median(widths)),
                       "statistic": f"median of all {len(rows)} images (read from the shards: no {MANIFEST})"},
        "shards": [{"name": url.rsplit("/", 1)[-1], "examples": count} for url, count in zip(urls, counts)],
    }  # fmt: skip


def open_shards(source: str, progress: bool = False) -> ShardDataset:
    """Shards from a folder written by `shard`, a folder of .tar files, or a URL pattern that webdataset expands
    (`{000000..000099}` ranges, `::`-separated lists). `dataset.json` is read beside the shards; shards without
    one are counted in one pass."""
    wds = _webdataset()
    path = Path(source).expanduser()
    if path.is_dir():
        manifest = _read_manifest(str(path / MANIFEST))
        names = (
            [shard["name"] for shard in manifest["shards"]] if manifest else sorted(p.name for p in path.glob("*.tar"))
        )
        urls = [str(path / name) for name in names]
        folder = str(path)
    else:
        urls = list(wds.shardlists.expand_urls(source))
        folder = urls[0].rsplit("/", 1)[0] if "/" in urls[0] and not urls[0].startswith("pipe:") else None
        manifest = _read_manifest(f"{folder}/{MANIFEST}") if folder else None
    if not urls:
        raise FileNotFoundError(f"No .tar shards in {source}.")
    named = f"{source} ({len(urls)} shards)"
    if manifest is None:
        return ShardDataset(urls, _scanned_manifest(urls, progress), named)
    listed = {shard["name"]: shard for shard in manifest["shards"]}
    unlisted = [url for url in urls if url.rsplit("/", 1)[-1] not in listed]
    if unlisted:
        raise ValueError(f"{folder}/{MANIFEST} does not list {unlisted[0]}: give shards written together with it.")
    chosen = [listed[url.rsplit("/", 1)[-1]] for url in urls]
    if len(chosen) < len(listed):  # some of the shards: their counts; per-class counts are the whole set's only
        manifest = {**manifest, "shards": chosen, "examples": sum(s["examples"] for s in chosen), "class_counts": None}
    return ShardDataset(urls, manifest, named)
