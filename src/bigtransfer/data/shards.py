"""Reading sharded tar datasets in the WebDataset format (written by `shard_writing.py`, or any tool that follows
the convention) with the `webdataset` library, a whole shard at a time.

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
import io
import json
import re
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..checkpoints.hub import install_hint
from ..checkpoints.io import parse_json, read_json
from ..processing.decoding import decode_stored_image, open_checked
from .datasets import ImageSize, LabelledImages
from .order import MAX_LANES, LaneOrder, lane_count

MANIFEST = "dataset.json"
SHARD_NAME = "shard-{:06d}.tar"
FORMAT = "webdataset"
HELD_SHARDS = MAX_LANES + 2  # at most, per reading process: every lane's shard, and a step's overlap
RECENT_READS = 8  # a held shard no read among a process's last 8 needed is dropped
TIMEOUT_S = 30  # reading a remote dataset.json
RESHARD = f"write the shards again with `bigtransfer shard`, or fix the file (or remove it: {MANIFEST} is optional)"


def webdataset_library():
    try:
        import webdataset
    except ImportError:
        raise ImportError(f"Reading or writing tar shards needs webdataset: {install_hint('shards')}.") from None
    return webdataset


def label_of(sample: dict[str, Any]) -> int | list[int]:
    """A sample's class id, or its list of class ids (multi-label), from `.cls` or `.json`."""
    if "cls" in sample:
        return int(sample["cls"])
    labels = json.loads(sample["json"]).get("labels") if "json" in sample else None
    if labels is None:
        raise ValueError(f"Sample {sample.get('__key__')!r} has no label: expected a .cls or a .json with 'labels'.")
    return labels


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
            rows = [label_of(sample) for url in self.urls for sample in read_samples(url)]
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
            label = label_of(sample)
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
    wds = webdataset_library()
    return iter(wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()))


def _read_manifest(location: str) -> dict[str, Any] | None:
    """dataset.json at a local path or an http(s) URL; None when there is none."""
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location, timeout=TIMEOUT_S) as response:
                text = response.read()
        except OSError:
            return None
        return parse_json(text, location, RESHARD)
    path = Path(location)
    return read_json(path, RESHARD) if path.is_file() else None


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
    wds = webdataset_library()
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
