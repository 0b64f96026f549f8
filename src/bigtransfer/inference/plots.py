"""The pictures of a run: training curves and the confusion matrix, as PNG files written atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .._util.files import atomic_path
from .._util.package import install_hint

logger = logging.getLogger(__name__)
HEADLINES = {"eval_top1": "top-1", "eval_map": "mAP"}  # metrics.jsonl's held-out measurements, as the plot names them


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure drawn by its own Agg canvas, or None without matplotlib. Neither pyplot nor
    `matplotlib.use` is touched: a notebook's backend and open figures stay as they are."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: skipping plots (%s).", install_hint("train"))
        return None
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, out: Path) -> Path:
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return out


def plot_curves(metrics_file: Path, out: Path) -> Path | None:
    """Training loss, learning rate and (when present) eval top-1 (or mAP) and few-shot accuracy against the step,
    as one PNG."""
    if not metrics_file.exists():
        return None
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    series = sorted({key for r in rows for key in r if key in HEADLINES or key.startswith("eval_fewshot_")})
    panels = 3 if series else 2
    figure = _figure((4.5 * panels, 3.4))
    if figure is None:
        return None
    axes = figure.subplots(1, panels)
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="step")
    warm = [r for r in train if r["lr"] > 0]  # the warm-up's first step has lr 0, which a log scale cannot show
    axes[1].plot([r["step"] for r in warm], [r["lr"] for r in warm])
    axes[1].set(title="learning rate", xlabel="step", yscale="log")
    for key in series:  # eval top-1, and the linear few-shot accuracies of pre-training's --fewshot-every
        points = [r for r in rows if key in r]
        label = HEADLINES.get(key) or key.removeprefix("eval_fewshot_").replace("shot", "-shot linear")
        axes[2].plot([r["step"] for r in points], [r[key] for r in points], marker="o", label=label)
    if series:
        axes[2].set(
            title="held-out mAP" if "eval_map" in series else "held-out accuracy",
            xlabel="step",
            ylim=(0, 1),
            xlim=(0, max(r["step"] for r in rows) * 1.02),
        )
        axes[2].legend(fontsize=8)
    return _save(figure, out)


def plot_confusion(confusion: list[list[int]], classes: list[str], out: Path) -> Path | None:
    matrix = np.asarray(confusion)
    size = max(4.0, 0.45 * len(classes) + 2)
    figure = _figure((size, size))
    if figure is None:
        return None
    axis = figure.subplots()
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
    return _save(figure, out)
