"""Classification metrics from logits and labels: top-1, top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import numpy as np


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
