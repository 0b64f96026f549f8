"""Reading sharded tar datasets in the WebDataset format (written by `shard_writing.py`, or any tool that follows
the convention), a whole shard at a time (`tar_reading.py`, over webdataset's opener).

A shard holds one sample per image: `<key>.jpg` (or `.png`) and its label, `<key>.cls` (a class id, the
WebDataset convention) or, for multi-label data, `<key>.json` {"labels": [ids…]}. `dataset.json` beside the
shards lists them with their counts, the classes and the images' sizes, so a reader knows the dataset's size,
its classes and its typical image size without opening a shard — memory and start-up grow with the number of
shards, not of images. Examples are numbered shard after shard; training visits them in `order.LaneOrder`,
which keeps each step to a few shards.

Shards and their dataset.json may come from anyone: a bad sample (a link, a missing or impossible label, a
member too large, the shard breaking off before it) is an unreadable example, skipped and listed like an image
that does not decode, and costs no other; a dataset.json whose names are not plain file names is refused.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import json
import logging
import re
import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .._util.files import parse_json
from ..processing.decoding import decode_stored_image, download, open_checked
from .datasets import CLASSES_ENV, MAX_CLASSES, ImageSize, LabelledImages, beyond_class_limit
from .order import MAX_LANES, LaneOrder, lane_count
from .shard_patterns import expand_pattern
from .tar_reading import ERROR, IMAGE_FIELDS, DamagedShard, read_samples

MANIFEST = "dataset.json"
SHARD_NAME = "shard-{:06d}.tar"
FORMAT = "webdataset"
HELD_SHARDS = MAX_LANES + 2  # at most, per reading process: every lane's shard, and a step's overlap
RECENT_READS = 8  # a held shard no read among a process's last 8 needed is dropped
RESHARD = f"write the shards again with `bigtransfer shard`, or fix the file (or remove it: {MANIFEST} is optional)"
# What a dataset.json may say a shard holds: every example costs the order a permutation entry (8 bytes) before
# a shard is read, so a count of 10^12 would exhaust memory; 500 times the default shard size.
MAX_SHARD_EXAMPLES = 1_000_000
Entry = tuple[bytes, Any, str] | str  # a sample as read: (image bytes, label, suffix), or why it cannot be used
logger = logging.getLogger(__name__)


def label_of(sample: dict[str, Any]) -> int | list[int]:
    """A sample's class id, or its list of class ids (multi-label), from `.cls` or `.json`; ValueError naming the
    sample for a missing label, or one that is not whole numbers, negative or beyond MAX_CLASSES."""
    key = sample.get("__key__")
    if "cls" not in sample and "json" not in sample:
        raise ValueError(f"sample {key!r} has no label: expected a .cls or a .json with 'labels'")
    unreadable = ValueError(
        f'sample {key!r} has an unreadable label: a .cls holds a class id, a .json {{"labels": [class ids…]}}'
    )
    try:
        label = int(sample["cls"]) if "cls" in sample else json.loads(sample["json"])["labels"]
    except (ValueError, TypeError, KeyError):  # not a number; not JSON, or no "labels" in it
        raise unreadable from None
    ids = [label] if "cls" in sample else label
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise unreadable
    problem = next(filter(None, map(beyond_class_limit, ids)), None)
    if problem:
        raise ValueError(f"sample {key!r}: {problem}")
    return label


def looks_like_shards(source: str) -> bool:
    """A folder written by `shard`, a folder of .tar files, or tar URLs/patterns (`…/shard-{000000..000099}.tar`,
    `pipe:…`, `https://…`)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / MANIFEST).is_file() or (any(path.glob("*.tar")) and not any(p.is_dir() for p in path.iterdir()))
    return source.startswith(("pipe:", "http://", "https://")) or bool(re.search(r"\.tar(\}|$|::)", source))


class ShardDataset(LabelledImages):
    """Examples in WebDataset tar shards: counts, classes and sizes from `dataset.json` (or, without one, from
    one pass over the shards); images read a whole shard at a time (`tar_reading.read_samples`). A process holds the
    encoded bytes of the shards its current examples need (`about_to_read`), at most HELD_SHARDS."""

    def __init__(self, urls: list[str], manifest: dict[str, Any], source: str, selection: np.ndarray | None = None):
        self.urls, self.manifest, self.source, self.selection = urls, manifest, source, selection
        self.classes = list(manifest["classes"])
        self.counts = [int(shard["examples"]) for shard in manifest["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._held: collections.OrderedDict[int, list[Entry]] = collections.OrderedDict()
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
        entry = self._shard(shard)[offset]
        if isinstance(entry, str):  # a bad sample: unreadable, as an image that does not decode
            raise ValueError(entry)
        data, label, suffix = entry
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

    def _shard(self, shard: int) -> list[Entry]:
        if shard in self._held:
            self._held.move_to_end(shard)
            return self._held[shard]
        self._held[shard] = entries = self._read(shard)
        while len(self._held) > HELD_SHARDS:
            self._held.popitem(last=False)
        return entries

    def _read(self, shard: int) -> list[Entry]:
        """The shard's examples as dataset.json numbers them: its samples, and for every example that it lacks
        (it breaks off, or changed after the manifest was written) the reason."""
        url, count = self.urls[shard], self.counts[shard]
        entries, damage = shard_entries(url, len(self.classes))
        if len(entries) > count:
            _warn_unlisted(url, len(entries), count)
            return entries[:count]
        missing = damage or (
            f"{url} holds {len(entries)} samples but {MANIFEST} says {count}: the shard changed after the manifest "
            "was written; rewrite both with `bigtransfer shard`"
        )
        return entries + [missing] * (count - len(entries))

    @property
    def labels(self) -> np.ndarray:
        """Every example's label, read from the shards (evaluation's reference; training never needs them all);
        -1 (multi-label: no class) for a sample that cannot be used, which evaluation skips."""
        if not hasattr(self, "_labels"):
            unusable = [] if self.multi_label else -1
            rows = [unusable if isinstance(entry, str) else entry[1] for shard in range(len(self.urls))
                    for entry in self._read(shard)]  # fmt: skip
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


@functools.cache
def _warn_unlisted(url: str, held: int, listed: int) -> None:  # once per process and shard
    logger.warning("%s holds %d samples but %s says %d: the last %d are not read; rewrite both with `bigtransfer "
                   "shard`.", url, held, MANIFEST, listed, held - listed)  # fmt: skip


def shard_entries(url: str, classes: int | None) -> tuple[list[Entry], str | None]:
    """(the shard's samples as entries, why it breaks off or None): a sample that cannot be used — the reader's
    reason, no image, a label that is no class (of `classes`, when known) — costs that sample, not the shard."""
    entries: list[Entry] = []
    try:
        for sample in read_samples(url):
            entries.append(_entry(sample, classes))
    except DamagedShard as error:
        return entries, str(error)
    return entries, None


def _entry(sample: dict[str, Any], classes: int | None) -> Entry:
    key = sample["__key__"]
    suffix = next((suffix for suffix in IMAGE_FIELDS if suffix in sample), None)
    if ERROR in sample:
        return sample[ERROR]
    if suffix is None:
        return f"sample {key!r} has no .jpg/.png/.webp image"
    try:
        label = label_of(sample)
    except ValueError as error:
        return str(error)
    beyond = [i for i in (label if isinstance(label, list) else [label]) if classes is not None and i >= classes]
    if beyond:
        return f"sample {key!r} has the class id {beyond[0]}, but {MANIFEST} lists {classes} classes"
    return sample[suffix], label, suffix


def _label_array(rows: list, classes: int, multi_label: bool) -> np.ndarray:
    if not multi_label:
        return np.asarray(rows, dtype=np.int64)
    labels = np.zeros((len(rows), classes), dtype=np.uint8)
    for row, present in enumerate(rows):
        labels[row, present] = 1
    return labels


def _read_manifest(location: str) -> dict[str, Any] | None:
    """dataset.json at a local path or an http(s) URL (bounded in bytes and time, as image URLs are), checked;
    None when there is none."""
    if location.startswith(("http://", "https://")):
        try:
            text = download(location)
        except urllib.error.HTTPError:  # the server has none (404), or does not give it
            return None
        except (OSError, ValueError) as error:
            raise OSError(f"Could not read {location} ({error}): check the URL and the server.") from None
    elif Path(location).is_file():
        text = Path(location).read_bytes()
    else:
        return None
    manifest = parse_json(text, location, RESHARD)
    problem = _manifest_problem(manifest)
    if problem:
        raise ValueError(f"{location} cannot be used: {problem}: {RESHARD}.")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    """What in a dataset.json would make reading it go wrong: a shard name that is not a plain file name (joined
    to `--data .` it would be a path elsewhere, or a `pipe:` command that webdataset runs in a shell), counts that
    are not whole numbers within MAX_SHARD_EXAMPLES, more than MAX_CLASSES classes, or fields of the wrong kind."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        return 'it has no list of "shards"'
    classes, counts, size = manifest.get("classes"), manifest.get("class_counts"), manifest.get("image_size")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        return 'its "classes" are not a list of names'
    if len(classes) > (limit := MAX_CLASSES()):
        return f"it lists {len(classes):,} classes, beyond the limit of {limit:,} ({CLASSES_ENV})"
    if counts is not None and not (
        isinstance(counts, list) and len(counts) == len(classes) and all(map(_count, counts))
    ):
        return 'its "class_counts" are not a count for each class'
    if not isinstance(manifest.get("multi_label", False), bool):
        return '"multi_label" is not true or false'
    if not (isinstance(size, dict) and _count(size.get("height")) and _count(size.get("width"))
            and isinstance(size.get("statistic"), str)):  # fmt: skip
        return 'its "image_size" is not a height and a width in pixels with its "statistic"'
    for shard in manifest["shards"]:
        name = shard.get("name") if isinstance(shard, dict) else None
        if not _plain_file_name(name):
            return f"the shard name {name!r} is not a plain file name in its folder (no '/', no ':')"
        if not (_count(shard.get("examples")) and shard["examples"] <= MAX_SHARD_EXAMPLES):
            return f"{name} holds {shard.get('examples')!r} examples, not a whole number up to {MAX_SHARD_EXAMPLES:,}"
    return None


def _plain_file_name(name: Any) -> bool:
    return isinstance(name, str) and Path(name).name == name and name not in ("", "..") and not {":", "\0"} & set(name)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _scanned_manifest(urls: list[str], progress: bool) -> dict[str, Any]:
    """Counts, labels and image sizes of shards without a dataset.json, from one pass over them. A sample that
    cannot be used keeps its place (training skips and lists it) and adds no class; a shard that breaks off
    holds the samples before."""
    counts, rows, heights, widths, reasons = [], [], [], [], []
    for url in tqdm(urls, unit="shard", desc=f"counting (no {MANIFEST})", disable=not progress):
        entries, damage = shard_entries(url, None)
        if damage:
            logger.warning("%s; the %d samples before are used.", damage, len(entries))
        for offset, entry in enumerate(entries):
            if isinstance(entry, str):
                reasons.append(entry)
                continue
            data, label, suffix = entry
            # an unreadable image still counts (its sample is there): training skips and lists it
            with contextlib.suppress(ValueError), open_checked(io.BytesIO(data), f"{url}[{offset}].{suffix}") as opened:
                heights.append(opened.height)
                widths.append(opened.width)
            rows.append(label)
        counts.append(len(entries))
    if not heights:
        example = f", e.g. {reasons[0]}" if reasons else ""
        raise ValueError(f"None of the {sum(counts)} samples of {len(urls)} shards has a readable image and label"
                         f"{example}.")  # fmt: skip
    multi_label = any(isinstance(row, list) for row in rows)
    classes = 1 + max((max(row, default=-1) if multi_label else row) for row in rows)
    labels = _label_array(rows, classes, multi_label)
    return {
        "classes": [str(i) for i in range(classes)], "multi_label": multi_label, "examples": sum(counts),
        "class_counts": (labels.sum(axis=0) if multi_label else np.bincount(labels, minlength=classes)).tolist(),
        "image_size": {"height": int(np.median(heights)), "width": int(np.median(widths)),
                       "statistic": f"median of all {len(heights)} readable images (read from the shards: "
                                    f"no {MANIFEST})"},
        "shards": [{"name": url.rsplit("/", 1)[-1], "examples": count} for url, count in zip(urls, counts)],
    }  # fmt: skip


def open_shards(source: str, progress: bool = False) -> ShardDataset:
    """Shards from a folder written by `shard`, a folder of .tar files, or a URL pattern that webdataset expands
    (`{000000..000099}` ranges, `::`-separated lists). `dataset.json` is read beside the shards; shards without
    one are counted in one pass."""
    path = Path(source).expanduser()
    if path.is_dir():  # an absolute folder: a name joined to it is a file there, never a URL or a `pipe:` command
        folder = path.resolve()
        manifest = _read_manifest(str(folder / MANIFEST))
        names = (
            [shard["name"] for shard in manifest["shards"]]
            if manifest
            else sorted(p.name for p in folder.glob("*.tar"))
        )
        urls = [str(folder / name) for name in names]
    else:
        urls = expand_pattern(source)
        folder = urls[0].rsplit("/", 1)[0] if "/" in urls[0] and not urls[0].startswith("pipe:") else None
        manifest = _read_manifest(f"{folder}/{MANIFEST}") if folder else None
    if not urls:
        raise FileNotFoundError(f"No .tar shards in {source}.")
    missing = [url for url in urls if ":" not in url.split("/", 1)[0] and not Path(url).is_file()]  # local files
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(urls)} shards {source} names do not exist, e.g. {missing[0]}: check the "
            "folder and the {first..last} range."
        )
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
