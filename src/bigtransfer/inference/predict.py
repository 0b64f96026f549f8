"""Batched prediction over a dataset (parallel loading): logits, pooled features, and evaluation against labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from ..data.datasets import ImageDataset
from ..data.device import use_channels_last
from ..data.eval_batches import input_batches
from ..processing.base import ProcessorBase
from ..runtime.exported import ExportedClassifier
from ..runtime.settings import DEFAULT_SETTINGS, InferenceSettings, with_old_keywords
from .metrics import accuracy_metrics, multi_label_metrics, top_classes


@dataclasses.dataclass
class Predictions:
    rows: np.ndarray  # float32, one finite row per readable image: logits, or pooled features for `pooled_features`
    indices: np.ndarray  # dataset index of each row
    failures: list[tuple[str, str]]  # (image name, error) of the unreadable images and of those given NaN or ±inf


NON_FINITE = (
    "the model's outputs for it are not finite (NaN or infinity): its weights are damaged or come from a run that "
    "diverged; retrain it, or check the model"
)


def device_and_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """Where a torch model's parameters live; an exported model says so itself."""
    if isinstance(model, torch.nn.Module):
        parameter = next(model.parameters())
        return parameter.device, parameter.dtype
    return model.device, model.dtype


OLD_KEYWORDS = ("batch_size", "workers", "bf16", "channels_last")  # what 0.x's signatures took one by one


def _settings_of(call: str, settings: InferenceSettings | int, old_keywords: dict[str, Any]) -> InferenceSettings:
    """The settings of a call that may still use 0.x's spelling: `batch_size` as the fourth positional argument,
    `workers=`, `bf16=`, `channels_last=` one by one (each with a DeprecationWarning, for one release)."""
    if not isinstance(settings, InferenceSettings):
        old_keywords, settings = {"batch_size": settings, **old_keywords}, DEFAULT_SETTINGS
    return with_old_keywords(call, old_keywords, OLD_KEYWORDS, stacklevel=4, settings=settings)[0]


@torch.inference_mode()
def predict_rows(
    model: Any,
    rows_of: Callable[[Any, torch.Tensor], torch.Tensor],
    dataset: ImageDataset,
    processor: ProcessorBase,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    *,
    progress: bool = False,
) -> Predictions:
    """`rows_of(model, pixel_values)` for every readable image of `dataset`, as float32 rows; unreadable images
    are reported, not fatal (none readable: zero rows), and so are rows holding NaN or infinity: no score or
    feature that means nothing is handed on as a result. The model runs where it is (`settings.device` and
    `settings.compile` are for loading it)."""
    device, dtype = device_and_dtype(model)
    model.eval()
    rows, indices, failures = [], [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    batches = input_batches(dataset, processor.eval_transform(), settings.batch_size, device, workers=settings.workers,
                            channels_last=use_channels_last(settings.channels_last, device), progress=progress)  # fmt: skip
    for batch in batches:
        failures += batch.failures
        if batch.pixel_values is None:
            continue
        with autocast:
            rows.append(rows_of(model, batch.pixel_values.to(dtype)).float())
        indices += batch.indices
    if not rows:
        return Predictions(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), failures)
    rows, indices = torch.cat(rows).cpu().numpy(), np.array(indices, dtype=np.int64)
    finite = np.isfinite(rows).all(axis=1)
    failures += [(dataset.name_of(int(index)), NON_FINITE) for index in indices[~finite]]
    return Predictions(rows[finite], indices[finite], failures)


def predict_logits(
    model: Any,
    dataset: ImageDataset,
    processor: ProcessorBase,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    *,
    progress: bool = False,
    **old_keywords: Any,
) -> Predictions:
    """Logits of every readable image (a torch model, or an export directory's classifier)."""
    settings = _settings_of("predict_logits", settings, old_keywords)
    return predict_rows(model, lambda network, pixels: network(pixels).logits, dataset, processor, settings,
                        progress=progress)  # fmt: skip


def pooled_features(
    model: Any,
    dataset: ImageDataset,
    processor: ProcessorBase,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    *,
    progress: bool = False,
    **old_keywords: Any,
) -> Predictions:
    """Pooled pre-logit features (BitModel's `pooler_output`, flattened) of every readable image; `model` is a
    BitModel or a classifier, whose head is then skipped, or an export that gives features (OpenVINO's)."""
    settings = _settings_of("pooled_features", settings, old_keywords)
    if isinstance(model, ExportedClassifier):
        base, rows_of = model, lambda network, pixels: network.features(pixels)
    else:
        base, rows_of = base_model(model), lambda network, pixels: network(pixels).pooler_output.flatten(1)
    return predict_rows(base, rows_of, dataset, processor, settings, progress=progress)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The BitModel of a classifier (the model itself otherwise). Of a torch.compile'd classifier, its BitModel
    compiled as the classifier was (same backend and options): `.bit` alone reaches through the compiled wrapper
    to the original module, which ran uncompiled without a word."""
    original = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule (torch._dynamo not imported)
    if original is not None:
        return model.dynamo_ctx(original.bit) if hasattr(original, "bit") else model
    return getattr(model, "bit", model)


def evaluate(
    model: torch.nn.Module,
    dataset: ImageDataset,
    processor: ProcessorBase,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    *,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    **old_keywords: Any,
) -> dict:
    """Accuracy of `model` on `dataset`, whose class names must all be known to the model's head; for multi-label
    data, average precision and F1 of the sigmoid scores (`metrics.multi_label_metrics`).

    Unreadable images are skipped and listed under "skipped_images". In a multi-process run every process calls it with
    its `rank`: each predicts every `world_size`-th image and all get the same metrics, so no process waits idle
    at a collective (with a timeout) while another evaluates.
    """
    settings = _settings_of("evaluate", settings, old_keywords)
    label2id = {name: i for i, name in model.config.id2label.items()}
    unknown = [name for name in dataset.classes if name not in label2id]
    if unknown:
        raise ValueError(
            f"Evaluation classes {unknown} are not among the model's labels: evaluate on the same classes."
        )
    mine = np.arange(rank, len(dataset), world_size)
    predictions = predict_logits(model, dataset.subset(mine) if world_size > 1 else dataset, processor, settings,
                                 progress=progress)  # fmt: skip
    rows = predictions.rows if dataset.multi_label else top_classes(predictions.rows)
    evaluated = Evaluated(rows, mine[predictions.indices], predictions.failures)
    if world_size > 1:
        evaluated = _gathered(evaluated)
    if not len(evaluated.indices):
        raise ValueError(f"None of the {len(dataset)} images of {dataset.source} could be read.")
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    columns = np.array([label2id[name] for name in dataset.classes], dtype=np.int64)  # dataset class → model's
    if dataset.multi_label:
        labels = np.zeros((len(evaluated.indices), len(classes)), dtype=np.uint8)
        labels[:, columns] = dataset.labels[evaluated.indices]
        scores = torch.from_numpy(evaluated.rows).sigmoid().numpy()  # as predict and pipeline() score them
        metrics = multi_label_metrics(scores, labels, classes)
    else:
        metrics = accuracy_metrics(evaluated.rows, columns[dataset.labels[evaluated.indices]], classes)
    return {**metrics, "skipped_images": [name for name, _ in evaluated.failures]}


class Evaluated(NamedTuple):
    """What evaluation needs of the logits, small enough to gather from every process: the best classes
    (single-label), or all the logits (multi-label, whose metrics rank every image for every class)."""

    rows: np.ndarray  # N × min(5, num_labels) class ids, best first; or N × num_labels logits
    indices: np.ndarray  # dataset index of each row
    failures: list[tuple[str, str]]


def _gathered(shard: Evaluated) -> Evaluated:
    """Every process's rows, joined in dataset order on every process."""
    import torch.distributed as dist

    shards: list[Evaluated | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, shard)
    indices = np.concatenate([part.indices for part in shards])
    order = np.argsort(indices, kind="stable")
    return Evaluated(np.concatenate([part.rows for part in shards])[order], indices[order],
                     [failure for part in shards for failure in part.failures])  # fmt: skip
