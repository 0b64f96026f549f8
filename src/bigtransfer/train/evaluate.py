"""Evaluation metrics (top-1, top-5, per-class accuracy, confusion matrix) and the plots of a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from ..processing import BitImageProcessor
from .data import ImageDataset

logger = logging.getLogger(__name__)


@torch.inference_mode()
def predict_logits(model, dataset: ImageDataset, processor: BitImageProcessor, batch_size: int = 64) -> np.ndarray:
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    model.eval()
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = [dataset.load(i) for i in range(start, min(start + batch_size, len(dataset)))]
        pixels = processor(images, return_tensors="pt")["pixel_values"].to(device, dtype)
        chunks.append(model(pixels).logits.float().cpu().numpy())
    return np.concatenate(chunks)


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    predictions = logits.argmax(-1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) for i, name in enumerate(classes) if confusion[i].sum() > 0
    }
    metrics = {"examples": len(labels), "top1": float((predictions == labels).mean()), "per_class": per_class}
    if len(classes) >= 5:
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        metrics["top5"] = float((top5 == labels[:, None]).any(-1).mean())
    metrics["confusion"] = confusion.tolist()
    return metrics


def evaluate(model, dataset: ImageDataset, processor: BitImageProcessor, batch_size: int = 64) -> dict:
    """Accuracy of `model` on `dataset`, whose class names must all be known to the model's head."""
    label2id = {name: i for i, name in model.config.id2label.items()}
    unknown = [name for name in dataset.classes if name not in label2id]
    if unknown:
        raise ValueError(
            f"Evaluation classes {unknown} are not among the model's labels: evaluate on the same classes."
        )
    labels = np.array([label2id[dataset.classes[y]] for y in dataset.labels])
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return accuracy_metrics(predict_logits(model, dataset, processor, batch_size), labels, classes)


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
    """Training loss, learning rate and (when present) eval accuracy against the step, as one PNG."""
    plt = _pyplot()
    if plt is None or not metrics_file.exists():
        return None
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_top1" in r]
    panels = 3 if evals else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="step", yscale="log")
    if evals:
        axes[2].plot([r["step"] for r in evals], [r["eval_top1"] for r in evals], marker="o")
        axes[2].set(title="eval top-1", xlabel="step", ylim=(0, 1), xlim=(0, max(r["step"] for r in rows) * 1.02))
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
