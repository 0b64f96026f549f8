"""Experiment trackers a run reports to (`RunOptions.report_to`, `--report-to`): TensorBoard, MLflow and Weights &
Biases, each through its own library (an optional extra), behind one small interface (`base.Tracker`). Only the
first process of a run reports; the others create no tracker at all."""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import mlflow, tensorboard, wandb
from .base import Tracker, Trackers, first_line

TRACKERS = ("tensorboard", "mlflow", "wandb")
CHECKS = {"tensorboard": tensorboard.check, "mlflow": mlflow.check, "wandb": wandb.check}
__all__ = ["TRACKERS", "Trackers", "check_trackers", "open_trackers", "resolve_report_to"]


def resolve_report_to(names: str | Iterable[str]) -> tuple[str, ...]:
    """The trackers a run reports to, from a comma list (or a sequence) of tensorboard, mlflow, wandb, or `all` /
    `none` as transformers' report_to; an unknown name raises ValueError naming the valid ones."""
    given = [part.strip() for name in ([names] if isinstance(names, str) else names) for part in name.split(",")]
    given = [name.lower() for name in given if name]
    unknown = [name for name in given if name not in (*TRACKERS, "all", "none")]
    if unknown:
        near = difflib.get_close_matches(unknown[0], (*TRACKERS, "all", "none"), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ValueError(f"unknown tracker {unknown[0]!r}{hint}: give a comma list of {', '.join(TRACKERS)}, or all / "
                         "none")  # fmt: skip
    if "all" in given:
        return TRACKERS
    return tuple(name for name in TRACKERS if name in given)  # "none" (alone, the default) names none


def check_trackers(names: Iterable[str]) -> None:
    """Before a run starts: every tracker's library is installed (else one line naming it and its install line),
    and MLflow's store can be opened."""
    for name in names:
        CHECKS[name]()


def _create(name: str, out: Path, config: dict[str, Any], resume: bool, step: int) -> Tracker:
    if name == "tensorboard":
        return tensorboard.TensorBoardTracker(out, config, step)
    if name == "mlflow":
        return mlflow.MLflowTracker(out, config, resume)
    return wandb.WandbTracker(out, config, resume)


@contextlib.contextmanager
def open_trackers(names: Iterable[str], out: Path, config: dict[str, Any], resume: bool) -> Iterator[Trackers]:
    """The run's trackers, created as training (re)starts (`Trackers.start`) and closed as the run ends ("FINISHED",
    "FAILED", or "KILLED" by Ctrl-C). On ranks other than 0 (torchrun's RANK) there are none. A tracker that cannot
    start (a server that does not answer, no W&B login) stops the run before its first step, in one line: later
    failures only switch that tracker off."""
    names = tuple(names) if int(os.environ.get("RANK", "0")) == 0 else ()
    trackers = Trackers(functools.partial(_open_each, names, out, config, resume))
    try:
        yield trackers
    except KeyboardInterrupt:
        trackers.close("KILLED")
        raise
    except BaseException:
        trackers.close("FAILED")
        raise
    trackers.close("FINISHED")


def _open_each(names: tuple[str, ...], out: Path, config: dict[str, Any], resume: bool, step: int) -> Iterator[Tracker]:
    for name in names:
        try:
            tracker = _create(name, out, config, resume, step)
        except Exception as error:
            raise OSError(f"Could not start reporting to {name} ({type(error).__name__}: {first_line(error)}): "
                          f"fix that, or leave {name} out of --report-to.") from None  # fmt: skip
        yield tracker
