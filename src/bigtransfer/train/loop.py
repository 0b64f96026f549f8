"""The training loop shared by fine-tuning and pre-training: load, step, log, checkpoint — with the data for
the next steps prepared by worker processes while the device trains on the current one.

Each step's data is a pure function of (seed, step) (`batches.py`), so resuming, splitting the
batch, adding processes or loading workers changes no update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .._util.files import atomic_path, atomic_write_text
from ..checkpoints.weights import load_torch_file
from ..data.datasets import LabelledImages
from ..data.device import use_channels_last
from ..data.order import LaneOrder, ShuffledOrder
from ..data.workers import LoadedImages, ordered_results, resolve_workers
from ..processing.transform import EvalTransform
from .batches import Augment, Layout, MicroBatch, TrainingExamples, assemble, chunks_per_micro_batch
from .best import BestWeights
from .distributed import Distributed, barrier, sum_over_processes, sync_gradients, wrap
from .interrupts import StopRequest
from .progress import StepProgress
from .run_file import RUN_FILE, changed_recipe, write_run_file
from .schedules import StepSchedule

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclasses.dataclass
class Regime:
    """What varies between fine-tuning and pre-training, as the loop sees it: the schedule and the per-example
    augmentation (the recipes' settings, `FineTuning` and `Pretraining`, become one of these)."""

    schedule: StepSchedule
    augment: Augment  # picklable: it runs in loading worker processes
    image_size: int  # side of the square images `augment` makes
    loss: str = "softmax"  # or "sigmoid": binary cross-entropy on one-hot targets (multi-label data always)
    label_smoothing: float = 0.0  # opt-in, off in the HyperRule (losses.py says how each loss applies it)
    class_weights: tuple[float, ...] | None = None  # per-class loss weights, in the classes' order (losses.py)


@dataclasses.dataclass(frozen=True)
class Speed:
    """Settings that change how fast a run goes: `workers` never changes a weight (on CPU, bit for bit);
    `compile`, `channels_last` and `batch_split` change only floating-point rounding."""

    workers: int | None = None  # loading processes; None: `default_workers()`, 0: load in the main process
    compile: bool = False  # torch.compile the model (a slow first step, then faster steps)
    channels_last: bool | None = None  # None: `data.device.use_channels_last`'s default for the device
    batch_split: int = 1  # micro-batches per step and process: less memory, same update


@dataclasses.dataclass(frozen=True)
class Saving:
    """The run's checkpoint.pt: written every `every` steps and at the end, continued with `resume`
    only when its `fingerprint` (model, data, recipe) equals this run's. `run_file` (the resolved options) is
    written as config.yaml once the run is known to start or continue, and names the changed options when a
    resume is refused."""

    fingerprint: dict = dataclasses.field(default_factory=dict)
    resume: bool = False
    every: int | None = None
    run_file: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Monitor:
    """A measurement taken every `every` steps (e.g. held-out top-1), logged in that step's metrics row with its
    keys prefixed by eval_. A `sharded` measurement is called on every process and shares the work out itself;
    otherwise rank 0 measures while the other processes wait for it (`Distributed.wait_for_main`)."""

    every: int
    measure: Callable[[int], dict]
    sharded: bool = False
    name: str = "eval"  # the key of its final measurement in metrics.json


@contextlib.contextmanager
def tuned_convolutions(device: torch.device) -> Iterator[None]:
    """cuDNN times its algorithms once per shape and keeps the fastest (training shapes are fixed); the
    process-wide setting is restored afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def previous_checkpoint(path: Path) -> Path:
    return path.with_name(path.stem + ".previous" + path.suffix)


def damaged_checkpoint(path: Path) -> Path:
    return path.with_name(path.stem + ".damaged" + path.suffix)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write the checkpoint beside the current one, check that it reads back, then keep the current one as
    checkpoint.previous.pt and put the new one in its place: a crash, a full disk or a damaged file never
    leaves a run without a checkpoint to continue from."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
            load_torch_file(tmp, mmap=True)  # complete and readable (the data are mapped, not read)
            if path.exists():
                os.replace(path, previous_checkpoint(path))
    except (OSError, RuntimeError, ValueError) as error:  # torch reports a full disk as a RuntimeError
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        raise OSError(
            f"Could not write the checkpoint {path} ({error}; {free / 2**20:.0f} MiB free on that disk): free disk "
            "space or pass an --out on another disk; --resume continues from the last complete checkpoint, which is "
            "intact."
        ) from None


class NonFiniteLoss(ValueError):
    """The loss became NaN or infinite: the weights are no longer worth saving."""


class NonFiniteWeights(ValueError):
    """A weight (or momentum) became NaN or infinite: an update can do that while its loss, computed before it,
    was still finite, so the state is checked itself before it is saved."""


class NoReadableExamples(ValueError):
    """A step's global batch held no readable image: a step on nothing would only pretend to train."""


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity (one device synchronisation for all)."""
    named = {name: tensor for name, tensor in tensors.items() if tensor.is_floating_point()}
    if not named:
        return []
    finite = torch.stack([torch.isfinite(tensor).all() for tensor in named.values()]).tolist()
    return [name for name, ok in zip(named, finite) if not ok]


def require_finite(tensors: dict[str, torch.Tensor], when: str) -> None:
    """Refuse to save a state holding NaN or infinity, naming what went wrong and the way out."""
    bad = non_finite(tensors)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteWeights(
            f"the weights became NaN or infinite {when} ({shown}): the run diverged, so it stops without saving "
            "this state; lower --base-lr (or check the data). The last saved checkpoint, if any, is intact."
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training, raised once the checkpoint is saved; the message says how to continue,
    `signal` which signal stopped the run (the command exits 128 + signal: 130, 143)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signal = signum


def fingerprint_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'field: checkpoint value → this run's value' for every field that differs, nested dicts by their keys."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        before, now = saved.get(key), current.get(key)
        if isinstance(before, dict) and isinstance(now, dict):
            differences += fingerprint_differences(before, now, f"{prefix}{key}.")
        elif before != now:
            differences.append(f"{prefix}{key}: {_short(before)} → {_short(now)}")
    return differences


def _short(value: Any) -> str:
    """A value's repr, long ones cut in the middle (paths differ at their ends)."""
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:40]}…{text[-55:]}"


def load_checkpoint_state(path: Path, fingerprint: dict, set_aside: bool = True, run_file: dict | None = None) -> dict:
    """The run's checkpoint; when it is damaged (truncated, or a member failing its CRC check, which torch.load
    does not check), the previous one (with a warning) if there is one. With `set_aside` (one process of a run),
    the damaged file becomes checkpoint.damaged.pt: left in place, the next save would keep it as the previous
    checkpoint, and the next recovery would have nothing sound to fall back on."""
    previous = previous_checkpoint(path)
    try:
        state = load_torch_file(path, verify=True)
    except (ValueError, FileNotFoundError) as error:
        if not previous.exists():
            raise
        state = load_torch_file(previous, verify=True)
        if set_aside and path.exists():
            os.replace(path, damaged_checkpoint(path))
            logger.warning("%s; continuing from the previous checkpoint, %s (the damaged one is kept as %s).",
                           error, previous, damaged_checkpoint(path))  # fmt: skip
        else:
            logger.warning("%s; continuing from the previous checkpoint, %s.", error, previous)
    differences = fingerprint_differences(state.get("fingerprint", {}), fingerprint)
    if differences:  # told in options where the run files say which (the fingerprint also sees the data's content)
        options = changed_recipe(path.parent / RUN_FILE, run_file) if run_file else []
        told = f"{RUN_FILE} → now: {', '.join(options)}" if options else f"checkpoint → now: {'; '.join(differences)}"
        raise ValueError(
            f"{path} comes from a different run ({told}): --resume only continues the same model, data and recipe; "
            "choose a new --out to start afresh."
        )
    return state


def drop_metrics_after(path: Path, step: int) -> None:
    """Forget the rows a killed run logged after its last checkpoint: the resumed run logs those steps again."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):  # a row torn by the kill
        return float("inf")


def append_metrics(path: Path, row: dict) -> None:
    """One JSON row; a non-finite number (a measurement that failed) is written as null, never as bare NaN."""
    clean = {key: value if not isinstance(value, float) or math.isfinite(value) else None for key, value in row.items()}
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(clean, allow_nan=False) + "\n")


class Reporter(Protocol):
    """Where a run's training rows also go (its experiment trackers: tracking/), on the first process only."""

    def start(self, step: int) -> None: ...  # training (re)starts after `step`: 0, or the restored checkpoint's

    def log_training(self, row: dict) -> None: ...  # a metrics.jsonl row of training, before any measurement


class MetricsLog:
    """One metrics.jsonl row per step, and the console's progress (measurements are also printed).

    Reading a loss from a GPU waits for it, so a step's row is written during the next step, while
    the device is busy with it: the host never stalls the device to log.
    """

    def __init__(self, path: Path, progress: StepProgress, enabled: bool, reporter: Reporter | None = None):
        self.path, self.progress, self.enabled, self.reporter = path, progress, enabled, reporter
        self.pending: tuple[dict, torch.Tensor] | None = None

    def close(self) -> None:
        self.flush()
        self.progress.close()

    def add(self, row: dict, loss_sum: torch.Tensor) -> None:
        self.flush()
        self.pending = (row, loss_sum)

    def flush(self, **extra: Any) -> None:
        if self.pending is None:
            return
        row, loss_sum = self.pending
        self.pending = None
        loss = float(loss_sum) / max(row.pop("examples"), 1)
        if not math.isfinite(loss):  # before any checkpoint or model is written from this state
            raise NonFiniteLoss(
                f"the training loss became {loss} at step {row['step']} (learning rate {row['lr']:g}): the run "
                "diverged, so it stops without saving this state; lower --base-lr (or check the data). The last "
                "saved checkpoint, if any, is intact."
            )
        row = {"step": row["step"], "lr": row["lr"], "loss": loss, **row}
        if self.reporter is not None:
            self.reporter.log_training(row)
        row.update(extra)
        if self.enabled:
            append_metrics(self.path, row)
        self.progress.update(row)
        if extra:
            shown = ", ".join(f"{key.removeprefix('eval_')} {value:.4f}" for key, value in extra.items())
            self.progress.note(f"step {row['step']}: {shown}")


class TrainingRun:
    """One run's state — model, optimiser, step, loaded-data stream — and its named steps."""

    def __init__(self, model: torch.nn.Module, regime: Regime, transform: EvalTransform, out: Path, context: Distributed, speed: Speed,
                 bf16: bool, saving: Saving, best: BestWeights | None = None):  # fmt: skip
        self.model, self.regime, self.transform = model, regime, transform
        self.out, self.context, self.saving = out, context, saving
        self.best = best  # the best evaluation so far (--keep-best, --early-stopping), recorded in the checkpoint
        self.channels_last = use_channels_last(speed.channels_last, context.device)
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model.to(context.device, memory_format=memory_format)
        schedule = regime.schedule
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=0.0, momentum=schedule.momentum, weight_decay=schedule.weight_decay
        )
        self.ddp = wrap(model, context)  # the module whose gradients DDP all-reduces
        self.forward = torch.compile(self.ddp) if speed.compile else self.ddp
        self.autocast = torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=bf16)
        weights = regime.class_weights
        self.class_weights = torch.tensor(weights, device=context.device) if weights is not None else None
        self.step = 0
        self.order: ShuffledOrder | LaneOrder | None = None  # the data order, whose position checkpoints record
        self.saved_step: int | None = None
        self.skipped: dict[str, str] = {}  # unreadable image → why
        self.examples_planned = self.examples_trained = 0  # over all processes, this session's steps

    # -- restore and checkpoint --------------------------------------------------------------------
    def begin(self) -> None:
        """Continue from the checkpoint when resuming, and create the output folder."""
        if self.saving.resume:
            if not any(path.exists() for path in (self.out / CHECKPOINT, previous_checkpoint(self.out / CHECKPOINT))):
                raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {self.out} to continue from.")
            self.restore()
        if self.context.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not self.saving.resume:  # rows of a run that was stopped before its first checkpoint
                (self.out / METRICS).unlink(missing_ok=True)
            for leftover in self.out.glob(f".{CHECKPOINT}.*.tmp"):  # half-written by a process that was killed
                leftover.unlink(missing_ok=True)
            if self.saving.run_file:  # before step 1: a killed run has it; a resumed one records its new speed options
                write_run_file(self.out, self.saving.run_file)
        barrier(self.context)

    def restore(self) -> None:
        state = load_checkpoint_state(self.out / CHECKPOINT, self.saving.fingerprint, set_aside=self.context.is_main,
                                      run_file=self.saving.run_file)  # fmt: skip
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        if self.best is not None:
            self.best.restore(state["best"])
        if self.context.is_main:
            drop_metrics_after(self.out / METRICS, self.step)

    def checkpoint(self) -> None:
        """Save the run's state on rank 0, once per step (the last periodic save may fall on the last step)."""
        if self.context.is_main and self.step != self.saved_step:
            require_finite({**self.model.state_dict(), **self.momentum()}, f"at step {self.step}")
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                     "torch_rng": torch.get_rng_state(), "fingerprint": self.saving.fingerprint,
                     "data_position": self.order.position(self.step) if self.order is not None else None}  # fmt: skip
            if self.best is not None:
                state["best"] = self.best.state()
            save_checkpoint(self.out / CHECKPOINT, state)
            self.saved_step = self.step
            if self.best is not None:
                self.best.checkpointed()

    def momentum(self) -> dict[str, torch.Tensor]:
        """SGD's momentum buffers by their parameters' names: a NaN there turns the weights NaN on --resume."""
        names = {id(parameter): name for name, parameter in self.model.named_parameters()}
        return {f"{names[id(parameter)]} (momentum)": state["momentum_buffer"]
                for parameter, state in self.optimizer.state.items() if state.get("momentum_buffer") is not None}  # fmt: skip

    # -- load -----------------------------------------------------------------------------------------
    def next_micro_batch(self, examples: TrainingExamples, loaded: Iterator[LoadedImages], part: int):
        """(micro-batch or None, seconds waited for the loading workers)."""
        began = time.perf_counter()
        chunks = [next(loaded) for _ in range(examples.layout.chunks)]
        waited = time.perf_counter() - began
        for chunk in chunks:
            self.note_failures(chunk.failures)
        plan = examples.plan(self.step, part)
        return assemble(plan, chunks, self.context.device, self.channels_last, self.transform), waited

    def note_failures(self, failures: list[tuple[str, str]]) -> None:
        for name, error in failures:
            if name not in self.skipped:
                logger.warning("Skipping unreadable training image %s: %s", name, error)
                self.skipped[name] = error

    # -- the schedule ---------------------------------------------------------------------------------
    def follow_schedule(
        self,
        examples: TrainingExamples,
        loaded: Iterator[LoadedImages],
        log: MetricsLog,
        monitor: Monitor | None,
        stop: StopRequest,
    ) -> bool:
        """Step until the schedule ends, early stopping ends it, or a stop is requested (then True, at a step
        boundary), logging each step, measuring and checkpointing when due.

        Step time is the loop's period: the host only queues work on a GPU, and the loop waits for the
        device once per step (reading a loss), so in steady state one period is one device step.
        """
        schedule, world_size = self.regime.schedule, self.context.world_size
        period_began = time.perf_counter()
        while (lr := schedule.lr(self.step)) is not None and not (self.best is not None and self.best.exhausted):
            row = self.train_step(examples, loaded, lr)
            now = time.perf_counter()
            row["images_per_s"] = round(row["examples"] * world_size / max(now - period_began, 1e-9), 1)
            log.add(row, row.pop("loss_sum"))
            period_began = now
            if monitor and self.step % monitor.every == 0 and self.step < schedule.steps:
                measured = monitor.measure(self.step) if monitor.sharded or self.context.is_main else {}
                if not monitor.sharded:
                    self.context.wait_for_main()
                log.flush(**{f"eval_{key}": value for key, value in measured.items()})
                if self.best is not None:
                    self.best.consider(self.step, measured, self.model)
                    if self.best.exhausted:
                        log.progress.note(f"step {self.step}: {self.best.stop_note()}; the run stops here")
                period_began = time.perf_counter()
            if self.saving.every and self.step % self.saving.every == 0:
                log.flush()
                self.checkpoint()
                period_began = time.perf_counter()
            if schedule.lr(self.step) is not None and stop.agreed(self.context):  # a finished run just finishes
                return True
        return False

    def summary(self, seconds: float, workers: int) -> dict:
        left_out = 1 - self.examples_trained / self.examples_planned if self.examples_planned else 0.0
        summary = {"steps": self.step, "skipped_images": sorted(self.skipped), "skipped_fraction": round(left_out, 4),
                   "seconds": round(seconds, 1), "rank": self.context.rank, "world_size": self.context.world_size,
                   "workers": workers}  # fmt: skip
        if self.context.device.type == "cuda":
            summary["cuda_peak_memory_gib"] = round(torch.cuda.max_memory_allocated(self.context.device) / 2**30, 2)
        return summary

    # -- one step -------------------------------------------------------------------------------------
    def train_step(self, examples: TrainingExamples, loaded: Iterator[LoadedImages], lr: float) -> dict:
        """One optimiser step over this process's micro-batches; the loss stays on the device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.forward.train()
        self.optimizer.zero_grad(set_to_none=True)
        layout = examples.layout
        loss_total, examples_seen, waited = torch.zeros((), device=self.context.device), 0, 0.0
        for part in range(layout.batch_split):
            batch, wait = self.next_micro_batch(examples, loaded, part)
            waited += wait
            last = part == layout.batch_split - 1
            with sync_gradients(self.ddp, last_micro_batch=last):
                if batch is not None:
                    loss_sum = self.loss_sum(batch)
                    # DDP averages over processes, so scale to the global-batch mean
                    (loss_sum * layout.world_size / layout.batch_size).backward()
                    loss_total += loss_sum.detach()
                    examples_seen += len(batch)
                elif last and layout.world_size > 1:
                    self.join_gradient_all_reduce()
        self.count_examples(examples_seen, layout.batch_size)
        self.optimizer.step()
        self.step += 1
        return {"step": self.step, "lr": lr, "examples": examples_seen, "loss_sum": loss_total,
                "data_wait_s": round(waited, 4)}  # fmt: skip

    def count_examples(self, examples_seen: int, batch_size: int) -> None:
        """Add the step's examples, over all processes, to the run's count; refuse a step whose global batch is
        empty (one process without readable images is fine: it joins the all-reduce with zero)."""
        trained = sum_over_processes(examples_seen, self.context)
        if not trained:
            example = next((f", e.g. {name}: {error.rstrip('.')}" for name, error in self.skipped.items()), "")
            raise NoReadableExamples(
                f"step {self.step + 1}: none of the {batch_size} examples of its batch had a readable image "
                f"({len(self.skipped)} unreadable training images skipped so far{example}): fix or remove the "
                "unreadable images, or check --data. The last saved checkpoint, if any, is intact."
            )
        self.examples_planned += batch_size
        self.examples_trained += trained

    def loss_sum(self, batch: MicroBatch) -> torch.Tensor:
        with self.autocast:
            logits = self.forward(batch.pixels).logits.float()
        smoothing, weights = self.regime.label_smoothing, self.class_weights
        if batch.labels.ndim == 2:  # multi-label: sigmoid + binary cross-entropy on the (mixed) label vectors
            return multi_label_loss_sum(logits, batch.labels, smoothing, weights)
        if self.regime.loss == "sigmoid":
            return multi_label_loss_sum(logits, one_hot_targets(batch, logits.shape[-1]), smoothing, weights)
        return softmax_loss_sum(logits, batch, smoothing, weights)

    def join_gradient_all_reduce(self) -> None:
        """A process with no readable images still takes part in DDP's gradient all-reduce (else the others
        wait forever), contributing zero: a forward pass on one blank image, times 0."""
        size = self.regime.image_size
        blank = torch.zeros(1, 3, size, size, device=self.context.device)
        with self.autocast:
            logits = self.forward(blank).logits.float()
        (logits.sum() * 0.0).backward()


def softmax_loss_sum(
    logits: torch.Tensor, batch: MicroBatch, smoothing: float = 0.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy summed over the examples, MixUp's two terms mixed by λ; label smoothing and class weights
    as torch's cross_entropy applies them (losses.py)."""
    softmax = functools.partial(F.cross_entropy, weight=weights, label_smoothing=smoothing, reduction="sum")
    loss_sum = softmax(logits, batch.labels)
    if batch.partner_labels is not None:
        partner_sum = softmax(logits, batch.partner_labels)
        loss_sum = batch.mixup_lambda * loss_sum + (1 - batch.mixup_lambda) * partner_sum
    return loss_sum


def multi_label_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy summed over classes and examples: an example's loss is its sum over classes (as
    big_vision's sigmoid_xent), so loss_sum / examples is a per-example loss like softmax's, and the gradient
    does not shrink as classes are added (a mean over classes would divide the learning rate by C). Label
    smoothing moves each target to y·(1-ε)+ε/2 and `weights` scale each class's term (losses.py says why)."""
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / 2
    return F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum")


def one_hot_targets(batch: MicroBatch, classes: int) -> torch.Tensor:
    """Class ids as one-hot float rows, MixUp-mixed with the partners' as multi-label targets are."""
    targets = F.one_hot(batch.labels, classes).float()
    if batch.partner_labels is None:
        return targets
    partners = F.one_hot(batch.partner_labels, classes).float()
    return batch.mixup_lambda * targets + (1 - batch.mixup_lambda) * partners


def train(
    model: torch.nn.Module,
    dataset: LabelledImages,
    regime: Regime,
    out: Path,
    *,
    transform: EvalTransform,
    context: Distributed,
    seed: int = 0,
    bf16: bool = False,
    saving: Saving = Saving(),
    monitor: Monitor | None = None,
    progress: bool = True,
    speed: Speed = Speed(),
    best: BestWeights | None = None,
    reporter: Reporter | None = None,
) -> dict:
    """Run the schedule to its end on `context` (this process's device and rank, from `distributed.process_group`);
    returns {"steps", "skipped_images", "seconds", …}. Rank 0 writes files. Ctrl-C finishes the step under way,
    saves the checkpoint and raises TrainingInterrupted (`interrupts.StopRequest`). `best` follows the sharded
    `monitor`'s measurements (`best.BestWeights`): it may end the run before its schedule."""
    schedule = regime.schedule
    workers = resolve_workers(speed.workers)
    layout = Layout(schedule.batch_size, context.world_size, context.rank, speed.batch_split, chunks=1)
    layout = dataclasses.replace(layout, chunks=chunks_per_micro_batch(layout.micro, workers))
    run = TrainingRun(model, regime, transform, out, context, speed, bf16, saving, best)
    run.begin()
    order = run.order = dataset.training_order(schedule.batch_size, seed)
    examples = TrainingExamples(
        dataset, order, regime.augment, seed, layout, schedule.mixup_alpha, run.step, schedule.steps
    )
    console = StepProgress(schedule.steps, run.step, enabled=progress and context.is_main)
    if saving.resume:
        console.note(f"resuming at step {run.step} of {schedule.steps} from {out / CHECKPOINT}")
    log = MetricsLog(out / METRICS, console, enabled=context.is_main, reporter=reporter)
    if reporter is not None:
        reporter.start(run.step)
    began = time.perf_counter()
    with StopRequest().listening() as stop:  # until the last checkpoint is written: a signal then only waits
        with tuned_convolutions(context.device), ordered_results(examples, workers, context.device.type == "cuda") as loaded:  # fmt: skip
            stopped = run.follow_schedule(examples, loaded, log, monitor, stop)
        log.close()
        run.checkpoint()
        context.wait_for_main()  # no process exits (and makes torchrun stop the others) before rank 0 has saved
    if stopped:
        message = f"interrupted at step {run.step}: checkpoint saved to {out / CHECKPOINT}; continue with --resume"
        raise TrainingInterrupted(message if context.is_main else "interrupted", stop.signal or signal.SIGINT)
    return run.summary(time.perf_counter() - began, workers)
