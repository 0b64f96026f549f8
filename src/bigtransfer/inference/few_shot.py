"""Few-shot: balanced, seeded subsets (the same K images per class on every run and machine), and
big_vision's linear few-shot evaluation of frozen features — accuracy in seconds, without fine-tuning."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from .._util.device import resolve_device
from ..data.datasets import ImageDataset
from ..data.sources import as_dataset
from ..models.modeling import BitModel, BitPreTrainedModel
from ..processing.base import ProcessorBase
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
    shots: list[int], seeds: int, l2_reg: float = L2_REG,
) -> dict[str, dict]:  # fmt: skip
    """{"<shots>": {"mean", "std", "runs"}}: for each shot count and seed (0 … seeds−1), the balanced seeded
    subset `few_shot_subset(labels, shots, seed)` of the training set (a seed's 1-shot images are among its
    5-shot ones), fitted with `ridge_accuracy` and scored on every test row. `features` maps a training
    index to its feature row; only the indices `fewshot_pool` names are needed."""
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    results = {}
    for count in shots:
        runs = []
        for seed in range(seeds):
            chosen = few_shot_subset(labels, count, seed)
            x = np.stack([features[int(index)] for index in chosen])
            runs.append(ridge_accuracy(x, labels[chosen], test_features, test_labels, num_classes, l2_reg))
        results[str(count)] = {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": runs}
    return results


def fewshot_pool(labels: np.ndarray, shots: list[int], seeds: int) -> np.ndarray:
    """The training indices any (shots, seed) subset of `linear_fewshot` uses: features are computed once,
    for these images only."""
    return np.unique(np.concatenate([few_shot_subset(labels, max(shots), seed) for seed in range(seeds)]))


def _shot_features(
    network: Any, train_set: ImageDataset, processor: ProcessorBase, batch_size: int, shots: list[int], seeds: int,
    *, workers: int | None, bf16: bool, progress: bool,
) -> tuple[np.ndarray, dict[int, np.ndarray], list[tuple[str, str]]]:  # fmt: skip
    """Pooled features of every image some (shots, seed) subset uses, drawn among the readable images only: an
    image that cannot be read is skipped (and listed) and the subsets are drawn again without it, as every other
    command skips unreadable images. Returns (readable indices, {position among them: feature}, failures); with
    every image readable the subsets are exactly `fewshot_pool`'s."""
    readable = np.arange(len(train_set))
    known: dict[int, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    while True:
        wanted = readable[fewshot_pool(train_set.labels[readable], shots, seeds)]
        missing = np.array([index for index in wanted if index not in known], dtype=np.int64)
        if not len(missing):
            break
        pooled = pooled_features(network, train_set.subset(missing), processor, batch_size, workers=workers, bf16=bf16,
                                 progress=progress)  # fmt: skip
        known.update({int(missing[row]): vector for row, vector in zip(pooled.indices, pooled.rows)})
        skipped += pooled.failures
        failed = set(missing.tolist()) - {int(missing[row]) for row in pooled.indices}
        readable = np.array([index for index in readable if index not in failed], dtype=np.int64)
    return readable, {position: known[index] for position, index in enumerate(readable) if index in known}, skipped


def fewshot(
    model: str | os.PathLike | BitPreTrainedModel,
    data: str | os.PathLike | ImageDataset,
    eval_data: str | os.PathLike | ImageDataset,
    *,
    classes: list[str] | None = None,
    shots: list[int] = (1, 5, 10),
    seeds: int = 3,
    l2_reg: float = L2_REG,
    processor: ProcessorBase | None = None,
    batch_size: int = 64,
    device: Any = None,
    workers: int | None = None,
    bf16: bool = False,
    compile: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Linear few-shot top-1 of `model`'s frozen pooled features on `eval_data`, trained on `shots` images per
    class of `data` (`classes` of both, by name; default all of `data`'s), for seeds 0 … `seeds`−1. A model
    given by name loads onto `device`; a model object is used where it is.

    Returns {"shots": {"<k>": {"mean", "std", "runs"}}, "classes", "feature_dim", "l2_reg", …}. The
    features are computed once per image, with the model's own evaluation preprocessing (or `processor`);
    `workers`, `bf16` and `compile` as in `evaluate`.
    """
    from ..processing.exact import BitImageProcessor

    began = time.perf_counter()
    if isinstance(model, BitPreTrainedModel):  # used where it is, as it is (e.g. during training)
        if processor is None:
            raise ValueError("With a model object, also pass processor= (the BitImageProcessor it was trained with).")
        network = model
    else:
        network = BitModel.from_pretrained(model).to(resolve_device(device))
        processor = processor or BitImageProcessor.from_pretrained(model)
    network = torch.compile(network) if compile else network
    train_set, test_set = as_dataset(data), as_dataset(eval_data)
    train_set = train_set.select_classes(classes) if classes else train_set
    test_set = test_set.select_classes(train_set.classes)
    shots = sorted({int(count) for count in shots})
    readable, features, skipped = _shot_features(network, train_set, processor, batch_size, shots, seeds,
                                                 workers=workers, bf16=bf16, progress=progress)  # fmt: skip
    test = pooled_features(network, test_set, processor, batch_size, workers=workers, bf16=bf16, progress=progress)
    results = linear_fewshot(features, train_set.labels[readable], test.rows, test_set.labels[test.indices], shots,
                             seeds, l2_reg)  # fmt: skip
    return {"shots": results, "classes": train_set.classes, "seeds": seeds, "l2_reg": l2_reg,
            "feature_dim": int(test.rows.shape[1]), "train_images_used": len(features),
            "eval_examples": len(test.indices), "skipped_eval_images": [name for name, _ in test.failures],
            "skipped_train_images": [name for name, _ in skipped],
            "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
