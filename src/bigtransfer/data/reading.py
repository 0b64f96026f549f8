"""The data options of a command (--data, --eval-data, --classes, the `datasets` split and columns, --multi-label,
--val-split) as one value: it reads the data, and the datasets it returns remember it, so that a training run's
resolved run file can say how to read the same images again."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .datasets import LabelledImages, hold_out
from .sources import load_dataset


def read_dataset(source: str | os.PathLike, classes: str | None = None, **reading: Any) -> LabelledImages:
    """A --data argument as a dataset, restricted to --classes (comma-separated names or indices) when given;
    `reading` goes to `load_dataset` (split, image_column, label_column, multi_label, for_eval)."""
    dataset = load_dataset(source, **reading)
    return dataset.select_classes(classes.split(",")) if classes else dataset


@dataclasses.dataclass(frozen=True)
class DataReading:
    """How a command reads its data, field for option; `load` reads it."""

    data: str
    eval_data: str | None = None
    classes: str | None = None  # comma-separated names or indices, applied to both
    split: str | None = None  # of a `datasets` source
    eval_split: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    multi_label: bool = False
    val_split: float | None = None  # hold this fraction of `data` out as evaluation data, seeded by the run's seed

    def load(self, seed: int = 0, for_eval: bool = False) -> tuple[LabelledImages, LabelledImages | None]:
        """(the data, the evaluation data or the --val-split held out of the data, or None). Each dataset's
        `reading` is (self, seed): what a run file records of it."""
        columns = dict(image_column=self.image_column, label_column=self.label_column, multi_label=self.multi_label)
        data = read_dataset(self.data, self.classes, split=self.split, for_eval=for_eval, **columns)
        eval_data = (
            read_dataset(self.eval_data, self.classes, split=self.eval_split, for_eval=True, **columns)
            if self.eval_data
            else None
        )
        if self.val_split:
            if eval_data is not None:
                raise ValueError(
                    "--val-split holds evaluation data out of --data: with --eval-data, drop one of the two."
                )
            data, eval_data = hold_out(data, self.val_split, seed)
        read_with = (self, seed)  # one object: a run file knows both datasets came from one reading
        for dataset in (data, eval_data):
            if dataset is not None:
                dataset.reading = read_with
        return data, eval_data
