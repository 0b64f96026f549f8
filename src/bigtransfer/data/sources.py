"""Which reader a `--data` source needs — a folder of class folders, a CSV, an IDX file, a saved or named
Hugging Face dataset, or tar shards — and the dataset it gives."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .datasets import (
    MULTI_LABEL_SEPARATOR,
    LabelledImages,
    from_csv,
    from_folder,
    from_hf_datasets,
    from_hub_dataset,
    from_idx,
)
from .shards import looks_like_shards, open_shards


def as_dataset(data: str | os.PathLike | LabelledImages) -> LabelledImages:
    """A dataset object as it is; anything else through `load_dataset`."""
    return data if isinstance(data, LabelledImages) else load_dataset(data)


def _looks_like_dataset_name(source: str) -> bool:
    """`food101` or `user/name`: at most one slash, no suffix, nothing a path would start with, and no existing
    local folder as its first part (`data/missing_dir` beside a `data/` folder is a misspelt path, not a Hub user's
    dataset: it fails at once rather than after the Hub's retries)."""
    head, slash, _ = source.partition("/")
    return (
        source.count("/") <= 1
        and "\\" not in source
        and not source.startswith((".", "/", "~"))
        and not Path(source).suffix
        and not (slash and Path(head).expanduser().is_dir())
    )


def _no_dataset_at(path: Path) -> FileNotFoundError:
    """The error for a local path that does not exist, naming the nearest names its folder does hold."""
    folder = path.parent if path.parent.is_dir() else None
    near = difflib.get_close_matches(path.name, [p.name for p in folder.iterdir()], n=3) if folder else []
    hint = f" (did you mean {' or '.join(str(folder / name) for name in near)}?)" if near else ""
    return FileNotFoundError(
        f"No dataset at {path}{hint}: pass an image folder, a CSV, an IDX images file, a saved dataset or tar shards."
    )


def load_dataset(
    source: str | os.PathLike,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    for_eval: bool = False,
    multi_label: bool = False,
) -> LabelledImages:
    """Pick the reader from what `source` is: folder of class folders, .csv, IDX images file, saved `datasets`,
    tar shards (`shards.open_shards`), or the name of a `datasets` dataset. `split` and the columns apply to `datasets` sources; without a split,
    training reads "train" and evaluation (`for_eval`) validation, else test. `multi_label`: several classes per
    image (folder or CSV), as an N×C matrix of labels."""
    if looks_like_shards(str(source)):
        given = {"split": split, "image column": image_column, "label column": label_column}
        if any(value is not None for value in given.values()):
            raise ValueError(f"{source} is a set of tar shards: the {'/'.join(given)} options are for `datasets` data.")
        shards = open_shards(str(source))
        if shards.multi_label != multi_label:
            raise ValueError(
                f"{source} holds {'several classes' if shards.multi_label else 'one class'} per image: "
                f"{'pass' if shards.multi_label else 'drop'} --multi-label."
            )
        return shards
    path = Path(source).expanduser()
    hf_options = dict(
        split=split, image_column=image_column, label_column=label_column, for_eval=for_eval, multi_label=multi_label
    )
    if not path.exists():
        if _looks_like_dataset_name(str(source)):
            return from_hub_dataset(str(source), **hf_options)
        raise _no_dataset_at(path)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return from_hf_datasets(path, **hf_options)
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
            f"'{MULTI_LABEL_SEPARATOR}'), a folder whose images appear in several class folders, or a `datasets` "
            "column of label lists."
        )
