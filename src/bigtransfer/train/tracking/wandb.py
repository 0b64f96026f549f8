"""Weights & Biases: one W&B run per run folder (project WANDB_PROJECT, default "bigtransfer"; its files in the run
folder's wandb/), with the config, the metrics by step, and the PNGs at the end; WANDB_MODE=offline records it all
locally for a later `wandb sync`. Its id is kept in the run folder, so --resume continues the same W&B run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..._util.package import optional_import
from .base import Tracker, save_run_id, saved_run_id

DEFAULT_PROJECT = "bigtransfer"
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 130}


def check() -> None:
    optional_import("wandb", "Reporting to Weights & Biases (--report-to wandb) needs wandb", "wandb")


class WandbTracker(Tracker):
    name = "Weights & Biases"

    def __init__(self, out: Path, config: dict[str, Any], resume: bool):
        import wandb

        run_id = saved_run_id(out, "wandb") if resume else None  # None: W&B draws a new one
        out.mkdir(parents=True, exist_ok=True)
        # create_new: a caller's own W&B run in the same process stays open (and is not logged into)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, name=out.resolve().name,
                              dir=str(out), config=config, id=run_id, resume="allow" if run_id else None,
                              reinit="create_new", allow_val_change=True)  # fmt: skip
        if run_id is None:
            save_run_id(out, "wandb", self.run.id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step < self.run.step:  # resumed online: W&B holds these steps already (and would warn at each one)
            return
        self.run.log(metrics, step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Image(str(path)) for tag, path in images.items()}, step=step)

    def finish(self, final: dict[str, float], model_dir: Path, report: Path) -> None:
        self.run.summary.update(final)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=EXIT_CODES[status])
