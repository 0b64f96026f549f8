"""The loss options a recipe may turn on — label smoothing and per-class weights — checked, resolved against the
training set a run actually uses, and recorded for the plan, the report and the resume fingerprint. Both are off
by default: the BiT-HyperRule trains with plain cross-entropy, and a run that names neither is unchanged.

How the loop applies them (`loop.TrainingRun.loss_sum`, `loop.multi_label_loss_sum`):

- softmax: torch's ``F.cross_entropy(logits, labels, weight=w, label_smoothing=ε, reduction="sum")``, i.e. per
  example ``(1-ε)·w[y]·(-log p[y]) + ε/C·Σ_c w[c]·(-log p[c])``. Unweighted, this is exactly what timm's
  ``LabelSmoothingCrossEntropy`` and transformers' ``Trainer(label_smoothing_factor=ε)`` (its ``LabelSmoother``)
  compute: ``(1-ε)·nll + ε·mean_c(-log p[c])``. With MixUp both mixed terms are smoothed (and weighted by their
  own class), which equals smoothing the mixed target, the loss being linear in it.
- sigmoid (multi-label data, and `pretrain --loss sigmoid`): each binary target moves towards 0.5,
  ``y·(1-ε) + ε/2``, as timm's ``BinaryCrossEntropy(smooth_dense=True)`` smooths dense targets: every class is
  its own two-way problem, so its uniform distribution is (½, ½). (timm's one-hot branch uses ε/C instead, a
  choice its author marks as open; one rule for every sigmoid target keeps multi-hot and one-hot alike.) Class
  weights scale each class's whole term, positives and negatives (BCE's ``weight``, not ``pos_weight``):
  a weight then says how much that class's task counts without moving the probability its term is minimised at,
  so sigmoid scores stay calibrated and the 0.5 threshold of `evaluate`'s F1 keeps its meaning.

The loss stays a *sum* over the step's examples divided by the global batch (the loop's lr semantics), where
torch's weighted mean would divide by the sum of the weights. So weights scale the gradient: with ``balanced``
softmax weights the mean weight over the training set is exactly 1 (Σ_c count_c · n/(C·count_c) = n), and the
learning rate keeps its meaning on average; weights from a file scale it by their mean over the examples. For
the sigmoid loss every example carries every class's term, so balanced weights scale it by their mean over the
classes (≥ 1). The logged loss is this weighted sum per example.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._util.files import read_json
from ..data.datasets import LabelledImages

BALANCED = "balanced"
RANGES = "0 ≤ label_smoothing < 1, class_weights 'balanced' or a file path"
FILE_FORM = 'a JSON file {"class name": weight, …} or a CSV file of class,weight rows naming every class'


def loss_option_problems(label_smoothing: float, class_weights: str | os.PathLike | None) -> list[str]:
    """'name=value' for each loss option out of range, for a recipe's one-line refusal."""
    problems = []
    if not 0 <= label_smoothing < 1:
        problems.append(f"label_smoothing={label_smoothing}")
    if class_weights is not None and (not isinstance(class_weights, (str, os.PathLike)) or not str(class_weights)):
        problems.append(f"class_weights={class_weights!r}")
    return problems


def class_weights_for(spec: str | os.PathLike | None, dataset: LabelledImages) -> tuple[float, ...] | None:
    """The per-class weights `spec` names, in the order of `dataset.classes`: None (no weights), 'balanced'
    (counted on `dataset`, the training set after --shots and --classes), or a file of weights by class name."""
    if spec is None:
        return None
    if str(spec) == BALANCED:
        try:
            counts = dataset.positives_per_class()
        except ValueError as error:  # shards that record no class counts
            raise ValueError(f"--class-weights balanced needs the class counts: {error}") from None
        return balanced_class_weights(counts)
    return read_class_weights(Path(spec), dataset.classes)


def balanced_class_weights(counts: np.ndarray) -> tuple[float, ...]:
    """n / (C · count_c), scikit-learn's compute_class_weight("balanced") on the labels counted in `counts`.
    For multi-label data `counts` are each class's positives and n their total: the same formula on the
    flattened (image, class) labels."""
    counts = np.asarray(counts, dtype=np.float64)
    if (counts <= 0).any():  # check_trainable refuses such data first; kept for a direct call
        raise ValueError("--class-weights balanced: every class needs at least one training example.")
    return tuple(float(w) for w in counts.sum() / (len(counts) * counts))


def read_class_weights(path: Path, classes: list[str]) -> tuple[float, ...]:
    """Weights by class name from `path` (.csv: class,weight rows, an optional class,weight header; else JSON),
    each class named once, each weight a positive finite number."""
    try:
        given = _csv_weights(path) if path.suffix.lower() == ".csv" else _json_weights(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"--class-weights {path} does not exist: give 'balanced' or {FILE_FORM}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise OSError(f"--class-weights {path} could not be read ({error}): give {FILE_FORM}.") from None
    if not isinstance(given, dict):
        raise ValueError(f"--class-weights {path} holds a {type(given).__name__}: give {FILE_FORM}.")
    unknown = [name for name in given if name not in classes]
    missing = [name for name in classes if name not in given]
    if unknown or missing:
        problem = f"names {_names(unknown)}, not classes of the training data" if unknown else ""
        problem += ("; " if unknown and missing else "") + (f"lacks the classes {_names(missing)}" if missing else "")
        raise ValueError(f"--class-weights {path} {problem}: name each of the data's {len(classes)} classes once "
                         f"({_names(classes)}).")  # fmt: skip
    bad = [f"{name!r}: {given[name]!r}" for name in classes if not _positive_number(given[name])]
    if bad:
        raise ValueError(
            f"--class-weights {path}: {', '.join(bad[:5])} — each weight must be a positive finite number."
        )
    return tuple(float(given[name]) for name in classes)


def _json_weights(path: Path) -> Any:
    try:
        return read_json(path, f"give {FILE_FORM}")
    except ValueError as error:  # read_json's message names the file and the fix; this names the option too
        raise ValueError(f"--class-weights {error}") from None


def _csv_weights(path: Path) -> dict[str, Any]:
    with open(path, newline="", encoding="utf-8") as file:
        rows = [row for row in csv.reader(file) if row]
    if rows and [cell.strip().lower() for cell in rows[0]] == ["class", "weight"]:
        rows = rows[1:]
    weights: dict[str, Any] = {}
    for number, row in enumerate(rows, 1):
        if len(row) != 2 or row[0] in weights:
            what = f"names {row[0]!r} twice" if len(row) == 2 else f"row {number} has {len(row)} fields"
            raise ValueError(f"--class-weights {path} {what}: give one class,weight row per class.")
        weights[row[0]] = _number(row[1])
    return weights


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # refused, named, with the other bad weights


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:5])
    return shown + (f" … ({len(names)} in all)" if len(names) > 5 else "")


def loss_record(label_smoothing: float, weights: tuple[float, ...] | None, classes: list[str]) -> dict[str, Any]:
    """The entries a run's fingerprint, plan and metrics.json get for the options that are on (none when both are
    off, so that runs without them — and their checkpoints — are as before)."""
    record: dict[str, Any] = {}
    if label_smoothing:
        record["label_smoothing"] = label_smoothing
    if weights is not None:
        record["class_weights"] = dict(zip(classes, weights))
    return record
