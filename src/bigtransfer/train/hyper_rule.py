"""BiT-HyperRule as data: resolution, schedule length, learning rate and MixUp from the dataset alone.

Two presets. "code" is what Google's released `big_transfer` code does (bit_hyperrule.py);
"paper" is arXiv 1912.11370 v3 §3.3. Both: SGD momentum 0.9, no weight decay, head zero-init.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .schedules import StepSchedule

SMALL_IMAGE_AREA = 96 * 96
PRESETS = ("code", "paper")
LR_SCALINGS = ("none", "linear", "sqrt")


def code_boundaries(dataset_size: int) -> list[int]:
    """Step boundaries of big_transfer: warm-up end, three ÷10 decays, end of training."""
    if dataset_size < 20_000:
        return [100, 200, 300, 400, 500]
    if dataset_size < 500_000:
        return [500, 3000, 6000, 9000, 10000]
    return [500, 6000, 12000, 18000, 20000]


def paper_steps(dataset_size: int) -> int:
    if dataset_size < 20_000:
        return 500
    return 10_000 if dataset_size < 500_000 else 20_000


@dataclass(frozen=True, kw_only=True)
class HyperRule(StepSchedule):
    """One fine-tuning recipe: the schedule, the resolution and the head's initialisation."""

    preset: str
    resize: int
    crop: int
    base_lr: float = 0.003
    batch_size: int = 512
    zero_init_head: bool = True


def resolution(image_size: tuple[int, int], preset: str, architecture: str | None = None) -> tuple[int, int]:
    """(resize, crop): small images (area < 96²) get 160 → 128, others 512 → 480 (code) or 448 → 384 (paper)."""
    height, width = image_size
    if height * width < SMALL_IMAGE_AREA:
        return 160, 128
    if preset == "paper":
        return (512, 480) if architecture == "R152x4" else (448, 384)  # the paper's one exception
    return 512, 480


def hyperrule(
    dataset_size: int,
    image_size: tuple[int, int],
    preset: str = "code",
    batch_size: int = 512,
    base_lr: float = 0.003,
    lr_scaling: str = "none",
    architecture: str | None = None,
) -> HyperRule:
    """The BiT-HyperRule for a dataset of `dataset_size` labelled images of `image_size` (height, width).

    lr_scaling adapts base_lr to a batch other than 512: "linear" (×batch/512), "sqrt", or "none"
    (the original recipe, which keeps 0.003 whatever the batch). architecture: "R50x1" … "R152x4" as
    `checkpoints.catalogue.architecture_of` derives it from the model's config (the paper preset trains R152x4 at 480 px).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}: use 'code' (the released code) or 'paper' (arXiv v3).")
    if lr_scaling not in LR_SCALINGS:
        raise ValueError(f"Unknown lr_scaling {lr_scaling!r}: use one of {', '.join(LR_SCALINGS)}.")
    if dataset_size < 1 or batch_size < 1:
        raise ValueError(f"dataset_size and batch_size must be positive, got {dataset_size} and {batch_size}.")
    factor = {"none": 1.0, "linear": batch_size / 512, "sqrt": math.sqrt(batch_size / 512)}[lr_scaling]
    resize, crop = resolution(image_size, preset, architecture)
    mixup = 0.1 if dataset_size >= 20_000 else 0.0
    if preset == "code":
        boundaries = code_boundaries(dataset_size)
        return HyperRule(
            preset="code", resize=resize, crop=crop, steps=boundaries[-1], warmup_steps=boundaries[0], decay_steps=boundaries[1:-1],
            mixup_alpha=mixup, base_lr=base_lr * factor, batch_size=batch_size,
        )  # fmt: skip
    steps = paper_steps(dataset_size)
    decays = [int(steps * fraction) for fraction in (0.3, 0.6, 0.9)]
    return HyperRule(
        preset="paper", resize=resize, crop=crop, steps=steps, warmup_steps=0, decay_steps=decays, mixup_alpha=mixup,
        base_lr=base_lr * factor, batch_size=batch_size,
    )  # fmt: skip
