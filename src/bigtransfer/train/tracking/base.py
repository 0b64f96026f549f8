"""What every experiment tracker does for a run, and the fan-out that hands each measurement to all of them: a
tracker that fails (its server gone, its disk full) is named in one warning and switched off, and the run goes on —
its checkpoint, metrics.jsonl and model/ never depend on a tracker."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..._util.files import read_json, write_json

logger = logging.getLogger(__name__)
RUN_IDS = "tracking.json"  # in the run folder: the MLflow and W&B run ids that --resume continues
EVALUATION_SCALARS = ("top1", "top5", "map", "micro_ap", "macro_f1", "micro_f1")  # an evaluation's curves


class Tracker:
    """One tracker of one run; each method a no-op unless the tracker records that kind of thing. It is created
    as training (re)starts — after the checkpoint is restored and matched, so a refused --resume touches no tracker
    run — and closed once, whatever happened."""

    name = "a tracker"  # as the warning names it

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars named train/… and eval/… at `step`."""

    def flush(self) -> None:
        """Make what was logged durable (after an evaluation, and at the end)."""

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """PNG files by name (the confusion matrix, the curves), at the end."""

    def finish(self, final: dict[str, float], model_dir: Path, report: Path) -> None:
        """The run ended with the `final` evaluation scalars, its model saved in `model_dir`, its report in `report`
        (metrics.json)."""

    def close(self, status: str) -> None:
        """The run ended with `status`: "FINISHED", "FAILED" or "KILLED" (Ctrl-C)."""


class Trackers:
    """The trackers of one run, called by the loop and the run as one: created by `opening(step)` when training
    (re)starts after `step` (0, or the checkpoint's on --resume)."""

    def __init__(self, opening: Callable[[int], Iterable[Tracker]]):
        self.opening, self.active = opening, []
        self.latest: dict[str, float] = {}  # each evaluation scalar's last value: the run's final figures

    def start(self, step: int) -> None:
        for tracker in self.opening(step):  # one that cannot start raises: those before it close with the run
            self.active.append(tracker)

    def log_training(self, row: dict[str, Any]) -> None:
        """A metrics.jsonl row of training (its step; loss, lr, images_per_s, data_wait_s) as train/… scalars."""
        if self.active:
            scalars = {f"train/{key}": value for key, value in row.items() if key != "step" and _is_number(value)}
            self._each("log_metrics", scalars, row["step"])

    def log_evaluation(self, result: dict[str, Any], step: int) -> None:
        """An evaluation's headline figures (top-1/top-5, or mAP, micro AP and F1; a few-shot monitor's accuracies)
        as eval/… scalars, made durable at once."""
        if not self.active:
            return
        kept = {key: value for key, value in result.items() if key in EVALUATION_SCALARS or key.startswith("fewshot_")}
        scalars = {f"eval/{key}": value for key, value in kept.items() if _is_number(value)}
        self.latest.update(scalars)
        self._each("log_metrics", scalars, step)
        self._each("flush")

    def log_outcome(self, metrics: dict[str, Any], out: Path) -> None:
        """The end of the run: its final evaluation, the PNGs it wrote, its model and metrics.json."""
        if not self.active:
            return
        step = metrics["steps"]
        if isinstance(metrics.get("eval"), dict):
            self.log_evaluation(metrics["eval"], step)
        images = {name: out / f"{name}.png" for name in ("confusion", "curves") if (out / f"{name}.png").is_file()}
        self._each("log_images", images, step)
        self._each("finish", dict(self.latest), Path(metrics["model_dir"]), out / "metrics.json")
        self._each("flush")

    def close(self, status: str) -> None:
        self._each("close", status)
        self.active = []

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:  # whatever the library raises: the run matters more than its curves
                self.active.remove(tracker)
                logger.warning("Reporting to %s stopped (%s: %s); the run goes on without it.", tracker.name,
                               type(error).__name__, first_line(error))  # fmt: skip
                with contextlib.suppress(Exception):  # already reported: a second failure says nothing new
                    tracker.close("FAILED")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def first_line(error: Exception, limit: int = 300) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "…"


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The run config as one level of dotted names (rule.base_lr), for trackers whose parameters are flat (MLflow
    params, TensorBoard hparams); lists and None as their JSON text."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)) and not (isinstance(value, float) and not math.isfinite(value)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, default=str)
    return flat


def saved_run_id(out: Path, tracker: str) -> str | None:
    """The id a tracker gave this run folder's run, which --resume continues (None: a run it never saw)."""
    path = out / RUN_IDS
    return read_json(path, "delete it to start new tracker runs").get(tracker) if path.is_file() else None


def save_run_id(out: Path, tracker: str, run_id: str) -> None:
    path = out / RUN_IDS
    ids = read_json(path, "delete it to start new tracker runs") if path.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {**ids, tracker: run_id})
