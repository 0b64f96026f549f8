"""The training loop shared by fine-tuning and pre-training: batches, MixUp, accumulation, checkpoints, logging.

Every random choice (which images, which crop, which MixUp λ) is drawn from a generator seeded
with (seed, step, position in the global batch). A step's data therefore depends on nothing but
its number, so `--resume`, `--batch-split` and multi-process runs reproduce the same updates.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..io import atomic_path
from .data import ImageDataset
from .distributed import Distributed, barrier, setup, shutdown, sync_gradients, wrap

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
MIXUP_STREAM = 1 << 30  # generator key of a step's MixUp draw, beyond any batch position


@dataclasses.dataclass
class Recipe:
    """What varies between fine-tuning and pre-training: the schedule and the per-example augmentation."""

    schedule: Any  # lr(step) → float | None, .steps, .batch_size, .momentum, .weight_decay, .mixup_alpha
    augment: Callable[[Any, np.random.Generator], torch.Tensor]


@functools.lru_cache(maxsize=4)
def _epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, size]).permutation(size)


def batch_indices(step: int, batch_size: int, size: int, seed: int) -> np.ndarray:
    """Dataset indices of a step's global batch: consecutive slices of per-epoch seeded permutations."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    return np.array([_epoch_order(size, seed, int(p // size))[p % size] for p in positions])


class BatchBuilder:
    """Loads and augments the examples of one micro-batch (and their MixUp partners)."""

    def __init__(self, dataset: ImageDataset, recipe: Recipe, seed: int):
        self.dataset, self.recipe, self.seed = dataset, recipe, seed
        self.skipped: set[str] = set()

    def example(self, index: int, step: int, position: int) -> torch.Tensor | None:
        try:
            image = self.dataset.load(index)
        except (OSError, ValueError) as error:
            name = self.dataset.name_of(index)
            if name not in self.skipped:
                logger.warning("Skipping unreadable training image %s: %s", name, error)
                self.skipped.add(name)
            return None
        return self.recipe.augment(image, np.random.default_rng([self.seed, step, position]))

    def micro_batch(self, step: int, indices: np.ndarray, positions: range, mixup: tuple | None):
        """(pixels, labels, partner labels, λ) for the global-batch positions given."""
        images, labels, partner_labels = [], [], []
        for position in positions:
            image = self.example(int(indices[position]), step, position)
            if image is None:
                continue
            if mixup is not None:
                lam, partners = mixup
                partner = self.example(int(indices[partners[position]]), step, int(partners[position]))
                if partner is None:
                    continue
                image = lam * image + (1 - lam) * partner
                partner_labels.append(int(self.dataset.labels[indices[partners[position]]]))
            images.append(image)
            labels.append(int(self.dataset.labels[indices[position]]))
        if not images:
            return None
        return torch.stack(images), torch.tensor(labels), torch.tensor(partner_labels), (mixup[0] if mixup else 1.0)


def mixup_draw(seed: int, step: int, alpha: float, batch_size: int) -> tuple[float, np.ndarray] | None:
    """One λ ~ Beta(α, α) per optimiser step, and a partner permutation over the global batch."""
    if alpha <= 0:
        return None
    rng = np.random.default_rng([seed, step, MIXUP_STREAM])
    return float(rng.beta(alpha, alpha)), rng.permutation(batch_size)


def save_checkpoint(path: Path, state: dict) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OSError(
                f"No space left to write the checkpoint {path}: free disk space or pass an --out on another disk "
                "(the previous checkpoint, if any, is intact)."
            ) from None
        raise


def load_checkpoint_state(path: Path, fingerprint: dict) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state.get("fingerprint", {})
    differing = sorted(key for key in set(saved) | set(fingerprint) if saved.get(key) != fingerprint.get(key))
    if differing:
        raise ValueError(
            f"{path} comes from a different run ({', '.join(differing)} differ): --resume only continues the same "
            "model, data and recipe; choose a new --out to start afresh."
        )
    return state


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(row) + "\n")


def train(
    model: torch.nn.Module,
    dataset: ImageDataset,
    recipe: Recipe,
    out: Path,
    *,
    seed: int = 0,
    batch_split: int = 1,
    device: str | None = None,
    bf16: bool = False,
    resume: bool = False,
    save_every: int | None = None,
    fingerprint: dict | None = None,
    on_eval: Callable[[torch.nn.Module, int], dict] | None = None,
    eval_every: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the schedule to its end; returns {"steps", "skipped_images", "seconds"}. Rank 0 writes files."""
    context: Distributed = setup(device)
    schedule = recipe.schedule
    shard = schedule.batch_size // context.world_size
    if schedule.batch_size % (context.world_size * batch_split):
        raise ValueError(
            f"--batch-size {schedule.batch_size} must divide evenly into {context.world_size} processes × "
            f"--batch-split {batch_split} micro-batches."
        )
    micro = shard // batch_split
    model = model.to(context.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.0, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    fingerprint = fingerprint or {}
    checkpoint_path, metrics_path = out / CHECKPOINT, out / METRICS
    start = 0
    if resume and checkpoint_path.exists():
        state = load_checkpoint_state(checkpoint_path, fingerprint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    elif resume:
        raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out} to continue from.")
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(context)
    trained = wrap(model, context)
    builder = BatchBuilder(dataset, recipe, seed)
    autocast = torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=bf16)

    def checkpoint(step: int) -> None:
        if context.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "torch_rng": torch.get_rng_state(), "fingerprint": fingerprint}  # fmt: skip
            save_checkpoint(checkpoint_path, state)

    bar = tqdm(total=schedule.steps, initial=start, disable=not (progress and context.is_main), unit="step")
    step, began = start, time.perf_counter()
    try:
        while (lr := schedule.lr(step)) is not None:
            tick = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices = batch_indices(step, schedule.batch_size, len(dataset), seed)
            mixup = mixup_draw(seed, step, schedule.mixup_alpha, schedule.batch_size)
            trained.train()
            optimizer.zero_grad(set_to_none=True)
            total_loss, seen = 0.0, 0
            for part in range(batch_split):
                first = context.rank * shard + part * micro
                batch = builder.micro_batch(step, indices, range(first, first + micro), mixup)
                with sync_gradients(trained, last_micro_batch=part == batch_split - 1):
                    if batch is None:
                        continue
                    pixels, labels, partner_labels, lam = batch
                    with autocast:
                        logits = trained(pixels.to(context.device)).logits.float()
                    labels = labels.to(context.device)
                    loss_sum = F.cross_entropy(logits, labels, reduction="sum")
                    if len(partner_labels):
                        partner_sum = F.cross_entropy(logits, partner_labels.to(context.device), reduction="sum")
                        loss_sum = lam * loss_sum + (1 - lam) * partner_sum
                    # DDP averages over processes, so scale to the global-batch mean
                    (loss_sum * context.world_size / schedule.batch_size).backward()
                    total_loss, seen = total_loss + loss_sum.item(), seen + len(labels)
            optimizer.step()
            step += 1
            rate = seen * context.world_size / max(time.perf_counter() - tick, 1e-9)
            row = {"step": step, "lr": lr, "loss": total_loss / max(seen, 1), "images_per_s": round(rate, 1)}
            if on_eval and eval_every and step % eval_every == 0 and step < schedule.steps and context.is_main:
                row.update({f"eval_{k}": v for k, v in on_eval(model, step).items()})
            if context.is_main:
                append_metrics(metrics_path, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            bar.update(1)
            if save_every and step % save_every == 0:
                checkpoint(step)
    except KeyboardInterrupt:
        checkpoint(step)
        bar.close()
        if context.is_main:
            print(f"\nInterrupted at step {step}: checkpoint saved to {checkpoint_path}; continue with --resume.")
        shutdown()
        raise SystemExit(130) from None
    bar.close()
    checkpoint(step)
    barrier(context)
    result = {"steps": step, "skipped_images": sorted(builder.skipped), "seconds": round(time.perf_counter() - began, 1),
              "rank": context.rank, "world_size": context.world_size}  # fmt: skip
    return result
