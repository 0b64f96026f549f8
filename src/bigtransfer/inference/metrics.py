"""Classification metrics from ranked predictions and labels: top-1, top-5, per-class accuracy and the confusion
matrix."""

from __future__ import annotations

import numpy as np

TOP_K = 5


def top_classes(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """The `k` best class ids of every row, best first (all of them when there are fewer classes)."""
    if logits.size == 0:
        return np.zeros((len(logits), 0), dtype=np.int64)
    return np.argsort(-logits, axis=-1, kind="stable")[:, :k]


def accuracy_metrics(ranked: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Metrics of predictions given as `top_classes` rows (column 0 is the prediction)."""
    predictions = ranked[:, 0]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) for i, name in enumerate(classes) if confusion[i].sum() > 0
    }
    metrics = {"examples": len(labels), "top1": float((predictions == labels).mean()), "per_class": per_class}
    if len(classes) > TOP_K:  # with five classes or fewer top-5 is always 1
        metrics["top5"] = float((ranked[:, :TOP_K] == labels[:, None]).any(-1).mean())
    metrics["confusion"] = confusion.tolist()
    return metrics
