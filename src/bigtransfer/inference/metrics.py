"""Classification metrics: from ranked predictions and labels, top-1, top-5, per-class accuracy and the confusion
matrix; for multi-label data, from scores and multi-hot labels, average precision and F1."""

from __future__ import annotations

import numpy as np

TOP_K = 5


def headline(metrics: dict) -> str:
    """The key of the one number that sums up an evaluation (curves, monitors, runs over seeds): top-1 accuracy,
    or mAP for multi-label data."""
    return "map" if "map" in metrics else "top1"


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


MULTI_LABEL_THRESHOLD = 0.5  # a sigmoid score at or above it predicts the class


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """The area under the precision-recall step curve, as sklearn's `average_precision_score` computes it: over
    the thresholds from the highest score down, each rise in recall weighted by the precision there. Tied scores
    form one threshold, so the order of equal scores cannot change the result. NaN when there is no positive."""
    order = np.argsort(-scores, kind="stable")
    ranked_scores, hits = scores[order], positives[order].astype(bool)
    true_positives = np.cumsum(hits)
    if true_positives[-1] == 0:
        return float("nan")
    last_of_each_score = np.r_[np.flatnonzero(np.diff(ranked_scores)), len(ranked_scores) - 1]
    true_positives = true_positives[last_of_each_score]
    precision = true_positives / (last_of_each_score + 1)
    recall_gain = np.diff(true_positives, prepend=0) / true_positives[-1]
    return float(np.sum(recall_gain * precision))


def f1_score(true_positives: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """2·TP / (predicted + actual) elementwise; 0 where nothing was predicted or present."""
    total = predicted + actual
    return np.where(total > 0, 2 * true_positives / np.maximum(total, 1), 0.0)


def multi_label_metrics(
    scores: np.ndarray, labels: np.ndarray, classes: list[str], threshold: float = MULTI_LABEL_THRESHOLD
) -> dict:
    """Metrics of N×C sigmoid scores against N×C {0, 1} labels.

    map: the mean of the per-class average precisions over the classes with at least one positive (a class
    absent from the data has no precision-recall curve); micro_ap: one average precision over every
    (image, class) pair. F1 counts a class predicted when its score ≥ threshold: macro_f1 averages the
    per-class F1 over the same classes as map, micro_f1 pools the counts of every class.
    """
    labels = labels.astype(bool)
    predicted = scores >= threshold
    present = np.flatnonzero(labels.any(axis=0))
    true_positives = (predicted & labels).sum(axis=0)
    per_class_ap = {int(c): average_precision(scores[:, c], labels[:, c]) for c in present}
    per_class_f1 = f1_score(true_positives, predicted.sum(axis=0), labels.sum(axis=0))
    micro_f1 = f1_score(true_positives.sum(), predicted.sum(), labels.sum())
    return {
        "examples": len(labels),
        "map": float(np.mean(list(per_class_ap.values()))) if per_class_ap else float("nan"),
        "micro_ap": average_precision(scores.ravel(), labels.ravel()),
        "macro_f1": float(np.mean(per_class_f1[present])) if len(present) else float("nan"),
        "micro_f1": float(micro_f1),
        "threshold": threshold,
        "per_class": {
            classes[c]: {"ap": per_class_ap[c], "f1": float(per_class_f1[c]), "positives": int(labels[:, c].sum())}
            for c in present
        },
    }
