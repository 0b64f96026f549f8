"""Batched prediction over a dataset (parallel loading), evaluation metrics (top-1, top-5, per-class accuracy,
confusion matrix) and the plots of a run."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..io import atomic_path
from ..loading import LoadedImages, gather_pixels, model_input, ordered_results, resolve_workers, use_channels_last
from ..processing import resize_and_crop
from ..processing_base import ProcessorBase
from .batches import load_examples
from .data import ImageDataset

logger = logging.getLogger(__name__)


def fixed_output_size(settings: dict[str, Any]) -> tuple[int, int]:
    """(height, width) every image comes out at: batches (and exported graphs) need one size, so a center
    crop or a resize to an exact height and width."""
    if settings["do_center_crop"]:
        return settings["crop_size"]["height"], settings["crop_size"]["width"]
    if settings["do_resize"] and "height" in settings["size"]:
        return settings["size"]["height"], settings["size"]["width"]
    raise ValueError(
        "These preprocessing settings keep each image's own aspect ratio, so images cannot be batched: "
        "enable center cropping (do_center_crop) or resize to a fixed {'height', 'width'}."
    )


def normalisation(processor: ProcessorBase, settings: dict[str, Any]) -> dict[str, Any]:
    """`loading.model_input`'s rescale/mean/std arguments for these processor settings."""
    mean, std = processor.mean_std(settings, 3) if settings["do_normalize"] else (None, None)
    return dict(rescale=settings["rescale_factor"] if settings["do_rescale"] else None,
                mean=None if mean is None else mean.tolist(), std=None if std is None else std.tolist())  # fmt: skip


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """Item i: the i-th batch of a dataset, decoded, resized and cropped as `settings` say (8-bit pixels)."""

    dataset: ImageDataset
    settings: dict[str, Any]
    batch_size: int

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __getitem__(self, item: int) -> LoadedImages:
        indices = range(item * self.batch_size, min((item + 1) * self.batch_size, len(self.dataset)))
        return load_examples(self.dataset, indices, indices, self.resize_and_crop)

    def resize_and_crop(self, image: Image.Image, _: int) -> np.ndarray:
        return np.moveaxis(resize_and_crop(np.moveaxis(np.asarray(image), -1, 0), self.settings), 0, -1)


@dataclasses.dataclass
class Predictions:
    logits: np.ndarray  # float32, one row per readable image (pooled features for `pooled_features`)
    indices: np.ndarray  # dataset index of each row
    failures: list[tuple[str, str]]  # (image name, error) of the unreadable images


class InputBatch(NamedTuple):
    pixel_values: torch.Tensor | None  # float model input on the device, None when no image of the batch loaded
    indices: list[int]  # dataset index of each row
    failures: list[tuple[str, str]]  # (image name, error) of the batch's unreadable images


def input_batches(
    dataset: ImageDataset,
    processor: ProcessorBase,
    batch_size: int,
    device: torch.device,
    *,
    workers: int | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> Iterator[InputBatch]:
    """The model input of every batch of `dataset`: decoded, resized and cropped in worker processes (exactly
    as BitImageProcessor does), rescaled and normalised on `device`."""
    settings = processor.settings({})
    fixed_output_size(settings)
    values = {**normalisation(processor, settings), "channels_last": channels_last}
    task = EvalBatches(dataset, settings, batch_size)
    with ordered_results(task, resolve_workers(workers), pin_memory=device.type == "cuda") as batches:
        for batch in tqdm(batches, total=len(task), unit="batch", disable=not progress):
            pixels = gather_pixels([batch], device)
            inputs = None if pixels is None else model_input(pixels, **values)
            yield InputBatch(inputs, batch.ids, batch.failures)


def device_and_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """Where a torch model's parameters live; an exported model says so itself."""
    if isinstance(model, torch.nn.Module):
        parameter = next(model.parameters())
        return parameter.device, parameter.dtype
    return model.device, model.dtype


@torch.inference_mode()
def predict_rows(
    model: Any,
    rows_of: Callable[[Any, torch.Tensor], torch.Tensor],
    dataset: ImageDataset,
    processor: ProcessorBase,
    batch_size: int = 64,
    *,
    workers: int | None = None,
    bf16: bool = False,
    channels_last: bool | None = None,
    progress: bool = False,
) -> Predictions:
    """`rows_of(model, pixel_values)` for every readable image of `dataset`, as float32 rows; unreadable images
    are reported, not fatal (none readable: zero rows)."""
    device, dtype = device_and_dtype(model)
    model.eval()
    rows, indices, failures = [], [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    batches = input_batches(dataset, processor, batch_size, device, workers=workers,
                            channels_last=use_channels_last(channels_last, device), progress=progress)  # fmt: skip
    for batch in batches:
        failures += batch.failures
        if batch.pixel_values is None:
            continue
        with autocast:
            rows.append(rows_of(model, batch.pixel_values.to(dtype)).float())
        indices += batch.indices
    for name, error in failures:
        logger.warning("Skipping unreadable image %s: %s", name, error)
    if not rows:
        return Predictions(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), failures)
    return Predictions(torch.cat(rows).cpu().numpy(), np.array(indices, dtype=np.int64), failures)


def predict_logits(model: Any, dataset: ImageDataset, processor: ProcessorBase, batch_size: int = 64, **options: Any):
    """Logits of every readable image (a torch model, or an export directory's classifier); `options` are
    `predict_rows`'."""
    return predict_rows(
        model, lambda network, pixels: network(pixels).logits, dataset, processor, batch_size, **options
    )


def pooled_features(model: Any, dataset: ImageDataset, processor: ProcessorBase, batch_size: int = 64, **options: Any):
    """Pooled pre-logit features (BitModel's `pooler_output`, flattened) of every readable image; `model` is a
    BitModel or a classifier, whose head is then skipped."""
    base = getattr(model, "bit", model)
    return predict_rows(base, lambda network, pixels: network(pixels).pooler_output.flatten(1), dataset, processor,
                        batch_size, **options)  # fmt: skip


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    predictions = logits.argmax(-1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) for i, name in enumerate(classes) if confusion[i].sum() > 0
    }
    metrics = {"examples": len(labels), "top1": float((predictions == labels).mean()), "per_class": per_class}
    if len(classes) > 5:  # with five classes or fewer top-5 is always 1
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        metrics["top5"] = float((top5 == labels[:, None]).any(-1).mean())
    metrics["confusion"] = confusion.tolist()
    return metrics


def evaluate(
    model: torch.nn.Module, dataset: ImageDataset, processor: ProcessorBase, batch_size: int = 64, **options: Any
) -> dict:
    """Accuracy of `model` on `dataset`, whose class names must all be known to the model's head.

    `options` are `predict_logits`'s (workers, bf16, channels_last, progress). Unreadable images are
    skipped with a warning and listed under "skipped_images".
    """
    label2id = {name: i for i, name in model.config.id2label.items()}
    unknown = [name for name in dataset.classes if name not in label2id]
    if unknown:
        raise ValueError(
            f"Evaluation classes {unknown} are not among the model's labels: evaluate on the same classes."
        )
    predictions = predict_logits(model, dataset, processor, batch_size, **options)
    if not len(predictions.indices):
        raise ValueError(f"None of the {len(dataset)} images of {dataset.source} could be read.")
    labels = np.array([label2id[dataset.classes[y]] for y in dataset.labels[predictions.indices]])
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    metrics = accuracy_metrics(predictions.logits, labels, classes)
    return {**metrics, "skipped_images": [name for name, _ in predictions.failures]}


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: skipping plots (pip install 'bigtransfer[train]').")
        return None
    return plt


def plot_curves(metrics_file: Path, out: Path) -> Path | None:
    """Training loss, learning rate and (when present) eval top-1 and few-shot accuracy against the step, as one PNG."""
    plt = _pyplot()
    if plt is None or not metrics_file.exists():
        return None
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    series = sorted({key for r in rows for key in r if key == "eval_top1" or key.startswith("eval_fewshot_")})
    panels = 3 if series else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="step")
    warm = [r for r in train if r["lr"] > 0]  # the warm-up's first step has lr 0, which a log scale cannot show
    axes[1].plot([r["step"] for r in warm], [r["lr"] for r in warm])
    axes[1].set(title="learning rate", xlabel="step", yscale="log")
    for key in series:  # eval top-1, and the linear few-shot accuracies of pre-training's --fewshot-every
        points = [r for r in rows if key in r]
        label = "top-1" if key == "eval_top1" else key.removeprefix("eval_fewshot_").replace("shot", "-shot linear")
        axes[2].plot([r["step"] for r in points], [r[key] for r in points], marker="o", label=label)
    if series:
        axes[2].set(
            title="held-out accuracy", xlabel="step", ylim=(0, 1), xlim=(0, max(r["step"] for r in rows) * 1.02)
        )
        axes[2].legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return out


def plot_confusion(confusion: list[list[int]], classes: list[str], out: Path) -> Path | None:
    plt = _pyplot()
    if plt is None:
        return None
    matrix = np.asarray(confusion)
    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set(
        xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true", title="confusion"
    )
    axis.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
    axis.set_yticklabels(classes, fontsize=8)
    if len(classes) <= 20:
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > matrix.max() / 2 else "black")  # fmt: skip
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return out
