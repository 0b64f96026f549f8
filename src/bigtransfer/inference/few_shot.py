"""Few-shot: balanced, seeded subsets (the same K images per class on every run and machine), and
big_vision's linear few-shot evaluation of frozen features — accuracy in seconds, without fine-tuning."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .._util.device import resolve_device
from ..data.datasets import ImageDataset
from ..data.sources import as_dataset
from ..models.modeling import BitModel, BitPreTrainedModel
from ..processing.base import ProcessorBase
from ..runtime.settings import DEFAULT_SETTINGS, InferenceSettings, is_whole_number, with_old_keywords
from .predict import pooled_features


def few_shot_subset(labels: np.ndarray, shots: int, seed: int, class_names: list[str] | None = None) -> np.ndarray:
    """Indices of `shots` examples of every class, chosen by a seeded permutation within each class.

    NumPy's PCG64 generator gives identical streams on every platform, so (labels, shots, seed)
    fully determines the subset; the result is sorted by class, then by the permutation.
    """
    labels = np.asarray(labels)
    if shots < 1:
        raise ValueError(f"--shots must be ≥ 1, got {shots}.")
    chosen = []
    for class_id in np.unique(labels):
        members = np.flatnonzero(labels == class_id)
        if len(members) < shots:
            name = repr(class_names[int(class_id)]) if class_names else str(int(class_id))
            raise ValueError(
                f"Class {name} has only {len(members)} examples, fewer than --shots {shots}: lower --shots."
            )
        rng = np.random.default_rng([seed, int(class_id)])
        chosen.append(members[rng.permutation(len(members))[:shots]])
    return np.concatenate(chosen)


def readable_few_shot_subset(dataset: ImageDataset, shots: int, seed: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """`few_shot_subset` drawn among the images that decode: one that cannot be read is dropped and the draw made
    again without it (as `fewshot` draws), so a K-shot class trains on K real images. Only the drawn images are
    decoded; with every one readable the subset is exactly `few_shot_subset`'s. Returns (indices, [(image,
    error)] for the images dropped); a class left with no readable image fails, naming it."""
    readable = np.arange(len(dataset))
    checked: set[int] = set()
    dropped: list[tuple[str, str]] = []
    while True:
        chosen = readable[few_shot_subset(dataset.labels[readable], shots, seed, dataset.classes)]
        unreadable = [
            int(index) for index in chosen if int(index) not in checked and not _decodes(dataset, index, dropped)
        ]
        checked.update(int(index) for index in chosen)
        if not unreadable:
            break
        readable = np.setdiff1d(readable, unreadable)
    emptied = sorted(set(np.unique(dataset.labels).tolist()) - set(np.unique(dataset.labels[readable]).tolist()))
    if emptied:
        raise ValueError(f"Class {dataset.classes[emptied[0]]!r} has no readable image: every one failed to decode.")
    return chosen, dropped


def _decodes(dataset: ImageDataset, index: int, dropped: list[tuple[str, str]]) -> bool:
    try:
        dataset.load(int(index))
    except (OSError, ValueError) as error:
        dropped.append((dataset.name_of(int(index)), str(error)))
        return False
    return True


# -- big_vision's few-shot linear evaluation -------------------------------------------------------------------

BIAS_FEATURE = 100.0  # a constant input column, large enough that its weight (the bias) is barely regularised
L2_REG = 2.0**10  # big_vision's l2_reg for its few-shot evaluators


@dataclasses.dataclass(frozen=True, kw_only=True)
class FewShotProtocol:
    """What a linear few-shot measurement is, as big_vision's few-shot evaluator configures it: for each shot
    count and seed (0 … seeds−1) a balanced seeded subset, fitted by ridge regression of strength `l2_reg`."""

    shots: tuple[int, ...] = (1, 5, 10)  # images per class; kept sorted, each count once
    seeds: int = 3  # subsets per shot count (the CLI's --runs)
    l2_reg: float = L2_REG

    def __post_init__(self) -> None:
        counts = tuple(self.shots) if isinstance(self.shots, Iterable) and not isinstance(self.shots, str) else ()
        if not counts or not all(is_whole_number(count) for count in counts) or min(counts) < 1:
            raise ValueError(f"shots must be counts ≥ 1 of images per class, e.g. (1, 5, 10), got {self.shots!r}.")
        if not is_whole_number(self.seeds) or self.seeds < 1:
            raise ValueError(f"seeds must be a whole number ≥ 1 (subsets per shot count), got {self.seeds!r}.")
        if not isinstance(self.l2_reg, (int, float)) or not math.isfinite(self.l2_reg) or self.l2_reg <= 0:
            raise ValueError(f"l2_reg must be a number > 0 (big_vision uses {L2_REG:g}), got {self.l2_reg!r}.")
        object.__setattr__(self, "shots", tuple(sorted({int(count) for count in counts})))


def ridge_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
    l2_reg: float = L2_REG,
) -> float:  # fmt: skip
    """Top-1 on (test_x, test_y) of L2-regularised least squares fitted to (train_x, train_y), as big_vision's
    few-shot evaluator does it: features whitened with the training rows' mean and std, a constant bias
    column, targets one-hot in {-1, +1}, solved in closed form in whichever of the primal (features × features)
    or dual (rows × rows) systems is smaller."""
    train_x, test_x = train_x.astype(np.float64), test_x.astype(np.float64)
    mean, std = train_x.mean(0, keepdims=True), train_x.std(0, keepdims=True) + 1e-5
    x = np.pad((train_x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_FEATURE)
    x_test = np.pad((test_x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_FEATURE)
    targets = 2.0 * np.eye(num_classes)[train_y] - 1.0
    rows, dim = x.shape
    if rows >= dim:
        weights = np.linalg.solve(x.T @ x + l2_reg * np.eye(dim), x.T @ targets)
    else:
        weights = x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(rows), targets)
    return float(((x_test @ weights).argmax(1) == test_y).mean())


def linear_fewshot(
    features: dict[int, np.ndarray], labels: np.ndarray, test_features: np.ndarray, test_labels: np.ndarray,
    protocol: FewShotProtocol,
) -> dict[str, dict]:  # fmt: skip
    """{"<shots>": {"mean", "std", "runs"}}: for each shot count and seed (0 … seeds−1), the balanced seeded
    subset `few_shot_subset(labels, shots, seed)` of the training set (a seed's 1-shot images are among its
    5-shot ones), fitted with `ridge_accuracy` and scored on every test row. `features` maps a training
    index to its feature row; only the indices `fewshot_pool` names are needed."""
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    results = {}
    for count in protocol.shots:
        runs = []
        for seed in range(protocol.seeds):
            chosen = few_shot_subset(labels, count, seed)
            x = np.stack([features[int(index)] for index in chosen])
            runs.append(ridge_accuracy(x, labels[chosen], test_features, test_labels, num_classes, protocol.l2_reg))
        results[str(count)] = {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": runs}
    return results


def fewshot_pool(labels: np.ndarray, protocol: FewShotProtocol) -> np.ndarray:
    """The training indices any (shots, seed) subset of `linear_fewshot` uses: features are computed once,
    for these images only."""
    return np.unique(
        np.concatenate([few_shot_subset(labels, max(protocol.shots), seed) for seed in range(protocol.seeds)])
    )


def _shot_features(
    network: Any, train_set: ImageDataset, processor: ProcessorBase, protocol: FewShotProtocol,
    settings: InferenceSettings, progress: bool,
) -> tuple[np.ndarray, dict[int, np.ndarray], list[tuple[str, str]]]:  # fmt: skip
    """Pooled features of every image some (shots, seed) subset uses, drawn among the readable images only: an
    image that cannot be read is skipped (and listed) and the subsets are drawn again without it, as every other
    command skips unreadable images. Returns (readable indices, {position among them: feature}, failures); with
    every image readable the subsets are exactly `fewshot_pool`'s."""
    readable = np.arange(len(train_set))
    known: dict[int, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    while True:
        wanted = readable[fewshot_pool(train_set.labels[readable], protocol)]
        missing = np.array([index for index in wanted if index not in known], dtype=np.int64)
        if not len(missing):
            break
        pooled = pooled_features(network, train_set.subset(missing), processor, settings, progress=progress)
        known.update({int(missing[row]): vector for row, vector in zip(pooled.indices, pooled.rows)})
        skipped += pooled.failures
        failed = set(missing.tolist()) - {int(missing[row]) for row in pooled.indices}
        readable = np.array([index for index in readable if index not in failed], dtype=np.int64)
    return readable, {position: known[index] for position, index in enumerate(readable) if index in known}, skipped


DEFAULT_PROTOCOL = FewShotProtocol()
OLD_KEYWORDS = ("shots", "seeds", "l2_reg", "batch_size", "device", "workers", "bf16", "compile")  # 0.x's fewshot


def fewshot(
    model: str | os.PathLike | BitPreTrainedModel,
    data: str | os.PathLike | ImageDataset,
    eval_data: str | os.PathLike | ImageDataset,
    *,
    classes: list[str] | None = None,
    protocol: FewShotProtocol = DEFAULT_PROTOCOL,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    processor: ProcessorBase | None = None,
    progress: bool = True,
    **old_keywords: Any,
) -> dict[str, Any]:
    """Linear few-shot top-1 of `model`'s frozen pooled features on `eval_data`, trained on `protocol.shots`
    images per class of `data` (`classes` of both, by name; default all of `data`'s), for seeds 0 …
    `protocol.seeds`−1. A model given by name loads onto `settings.device`; a model object is used where it is;
    either is torch.compile'd when `settings.compile`.

    Returns {"shots": {"<k>": {"mean", "std", "runs"}}, "classes", "feature_dim", "l2_reg", …}. The
    features are computed once per image, with the model's own evaluation preprocessing (or `processor`).
    0.x's separate keywords (shots=, seeds=, l2_reg=, batch_size=, device=, workers=, bf16=, compile=) still
    work for this release, with a DeprecationWarning.
    """
    from ..processing.exact import BitImageProcessor

    protocol, settings = with_old_keywords("fewshot", old_keywords, OLD_KEYWORDS, protocol=protocol, settings=settings)
    began = time.perf_counter()
    if isinstance(model, BitPreTrainedModel):  # used where it is, as it is (e.g. during training)
        if processor is None:
            raise ValueError("With a model object, also pass processor= (the BitImageProcessor it was trained with).")
        network = model
    else:
        network = BitModel.from_pretrained(model).to(resolve_device(settings.device))
        processor = processor or BitImageProcessor.from_pretrained(model)
    network = torch.compile(network) if settings.compile else network
    train_set, test_set = as_dataset(data), as_dataset(eval_data)
    train_set = train_set.select_classes(classes) if classes else train_set
    test_set = test_set.select_classes(train_set.classes)
    readable, features, skipped = _shot_features(network, train_set, processor, protocol, settings, progress)
    test = pooled_features(network, test_set, processor, settings, progress=progress)
    results = linear_fewshot(features, train_set.labels[readable], test.rows, test_set.labels[test.indices], protocol)
    return {"shots": results, "classes": train_set.classes, "seeds": protocol.seeds, "l2_reg": protocol.l2_reg,
            "feature_dim": int(test.rows.shape[1]), "train_images_used": len(features),
            "eval_examples": len(test.indices), "skipped_eval_images": [name for name, _ in test.failures],
            "skipped_train_images": [name for name, _ in skipped],
            "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
