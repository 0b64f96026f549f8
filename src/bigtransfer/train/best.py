"""The best held-out evaluation of a run: the weights `--keep-best` saves as model/, and the count of evaluations
without improvement that `--early-stopping` stops on.

Its own module because it is bookkeeping with its own lifecycle beside the loop's: the best weights go to disk the
moment they are found (rank 0, atomically, as best-step<N>.safetensors), never only into memory, so a killed run
loses nothing; the run's checkpoint records the best step and value and the evaluations since, so --resume
decides exactly as the uninterrupted run would. Every process takes the same decisions without a word exchanged:
the sharded evaluation gathers every process's predictions, and each computes the headline from the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoints.weights import read_state_dict, write_state_dict
from ..inference.metrics import headline

FILE_PREFIX = "best-step"  # best-step<N>.safetensors: the model's state_dict after step N


def check_best_options(keep_best: bool, early_stopping: int | None, eval_every: int | None, eval_data: bool) -> None:
    """Both options follow held-out evaluations during training: refuse them without, naming the fix."""
    if early_stopping is not None and early_stopping < 1:
        raise ValueError(f"early_stopping must be ≥ 1 (evaluations without improvement), got {early_stopping}.")
    asked = [name for name, on in (("--keep-best", keep_best), ("--early-stopping", early_stopping)) if on]
    missing = [
        name
        for name, given in (("--eval-data DATA (or --val-split)", eval_data), ("--eval-every N", eval_every))
        if not given
    ]
    if asked and missing:
        raise ValueError(
            f"{' and '.join(asked)} follow held-out evaluations while training: pass {' and '.join(missing)}."
        )


def best_fingerprint(keep_best: bool, early_stopping: int | None, eval_every: int | None, eval_examples: int) -> dict:
    """What a resumed run must share with this one to choose the same best weights and stop at the same step; empty
    when neither option is on, so the checkpoints of other runs keep their fingerprint."""
    if not (keep_best or early_stopping):
        return {}
    return {"keep_best": keep_best, "early_stopping": early_stopping, "eval_every": eval_every,
            "eval_examples": eval_examples}  # fmt: skip


class BestWeights:
    """The best held-out evaluation so far (a higher value is better; a tie keeps the earlier one), its weights
    on disk when `keep`, and the evaluations since it, which end the run after `patience` of them."""

    def __init__(self, out: Path, keep: bool, patience: int | None, writes: bool):
        self.out, self.keep, self.patience, self.writes = out, keep, patience, writes  # writes: rank 0
        self.step: int | None = None
        self.metric: str | None = None
        self.value: float | None = None
        self.since = 0  # evaluations since the best one
        self.saved_step: int | None = None  # the best step the last checkpoint records: its file stays

    def path(self, step: int) -> Path:
        return self.out / f"{FILE_PREFIX}{step}.safetensors"

    def improves(self, value: float) -> bool:
        return self.value is None or value > self.value

    def consider(self, step: int, measured: dict[str, float], model: torch.nn.Module) -> None:
        """One evaluation during training ({"top1": …} or {"map": …}): the new best is written at once."""
        ((metric, value),) = measured.items()
        if not self.improves(value):
            self.since += 1
            return
        self.step, self.metric, self.value, self.since = step, metric, value, 0
        if self.keep and self.writes:
            write_state_dict(model.state_dict(), self.path(step))
            self.remove_superseded()

    @property
    def exhausted(self) -> bool:
        """True once `patience` evaluations in a row did not improve: the loop stops at that step boundary."""
        return self.patience is not None and self.since >= self.patience

    def stop_note(self) -> str:
        return (f"early stopping: {self.since} evaluations without a {self.metric} above {self.value:.4f} "
                f"(step {self.step})")  # fmt: skip

    # -- the checkpoint's record -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "metric": self.metric, "value": self.value, "since": self.since}

    def restore(self, state: dict[str, Any]) -> None:
        self.step, self.metric, self.value, self.since = state["step"], state["metric"], state["value"], state["since"]
        self.saved_step = self.step

    def checkpointed(self) -> None:
        """The checkpoint now records the current best: older best files are no longer needed to resume."""
        self.saved_step = self.step
        if self.writes:
            self.remove_superseded()

    def remove_superseded(self) -> None:
        """Keep the current best and the one the last checkpoint records (a run killed now resumes from it):
        at most two copies of the weights, however many times the best improves."""
        kept = {self.path(step).name for step in (self.step, self.saved_step) if step is not None}
        for file in [*self.out.glob(f"{FILE_PREFIX}*.safetensors"), *self.out.glob(f".{FILE_PREFIX}*.tmp")]:
            if file.name not in kept:  # and what a killed write left half-done
                file.unlink(missing_ok=True)

    # -- the end of the run --------------------------------------------------------------------------------
    def finish(self, step: int, final: dict[str, Any]) -> bool:
        """The final evaluation is a candidate too: True when it is the best (the final weights are then model/'s)."""
        metric = headline(final)
        if not self.improves(final[metric]):
            return False
        self.step, self.metric, self.value = step, metric, final[metric]
        return True

    def load_into(self, model: torch.nn.Module) -> None:
        model.load_state_dict(read_state_dict(self.path(self.step)))

    def report(self, steps: int, kept: dict[str, Any] | None) -> dict[str, Any]:
        """metrics.json's entries: the best evaluation (with `keep`), and where and why the run stopped early.

        The best value is the headline of `kept`, model/'s own evaluation, which `evaluate` on model/ repeats: on a
        CPU it equals the value measured during training; on CUDA the loop's autotuned convolutions (cudnn.benchmark)
        may round a near-tie otherwise."""
        entries: dict[str, Any] = {}
        if self.keep and kept is not None:
            entries["best"] = {"step": self.step, "metric": self.metric, "value": kept[self.metric]}
        if self.exhausted:
            entries["stopped_early"] = {"step": steps, "best_step": self.step, "metric": self.metric,
                                        "best_value": self.value, "patience": self.patience}  # fmt: skip
        return entries
