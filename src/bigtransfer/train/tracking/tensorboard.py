"""TensorBoard: event files in the run folder's tensorboard/ (`tensorboard --logdir runs/` shows every run), written
by torch's SummaryWriter; on --resume the events a killed run wrote after its checkpoint are purged, so no step's
curve doubles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..._util.package import optional_import
from ...processing.decoding import open_checked
from .base import Tracker, flat_config

FOLDER = "tensorboard"


def check() -> None:
    optional_import(
        "tensorboard", "Reporting to TensorBoard (--report-to tensorboard) needs tensorboard", "tensorboard"
    )


class TensorBoardTracker(Tracker):
    name = "TensorBoard"

    def __init__(self, out: Path, config: dict[str, Any], step: int):
        """Events continue after `step`: those a killed run wrote later are hidden (purge_step: a SessionLog.START
        that purges the events at and after it); the config is written when the run starts from scratch."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter

        self.config, self.summary = config, Summary
        self.writer = SummaryWriter(str(out / FOLDER), purge_step=step + 1)
        if step == 0:
            self.writer.add_text("config", _as_code(_yaml(config)), 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """A row as one event of TensorBoard's scalars (simple values): 8 µs a row where add_scalar per value took
        270 (its checks and one event each), which the loop would pay at every step."""
        values = [self.summary.Value(tag=tag, simple_value=value) for tag, value in metrics.items()]
        self.writer.file_writer.add_summary(self.summary(value=values), step)

    def flush(self) -> None:
        self.writer.flush()

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for tag, path in images.items():
            with open_checked(path, path) as image:  # the run's own PNGs, opened as every image is
                self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def finish(self, final: dict[str, float], model_dir: Path, report: Path) -> None:
        """The config as hparams beside the final figures (the eval/… scalars already in this run), so the HParams
        tab compares runs by them."""
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(flat_config(self.config), final):
            self.writer.file_writer.add_summary(summary)

    def close(self, status: str) -> None:
        self.writer.close()


def _yaml(config: dict[str, Any]) -> str:
    import yaml  # the tensorboard extra brings it

    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def _as_code(text: str) -> str:
    """TensorBoard renders text as Markdown: indented, the YAML shows as written."""
    return "".join(f"    {line}\n" for line in text.splitlines())
