"""The learning-rate schedule both recipes use: SGD with momentum, a linear warm-up from 0, then the base rate
divided by 10 after each decay step. The HyperRule (fine-tuning) and BiT's upstream recipe differ only in
their numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

UPSTREAM_DECAY_FRACTIONS = (1 / 3, 2 / 3, 8 / 9)


@dataclass(frozen=True, kw_only=True)
class StepSchedule:
    """`lr(step)` is the learning rate of that step, None once training is over."""

    steps: int
    warmup_steps: int
    decay_steps: list[int] = field(default_factory=list)  # the rate is ÷10 for every boundary below the step
    base_lr: float
    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    mixup_alpha: float = 0.0

    def lr(self, step: int) -> float | None:
        if step >= self.steps:
            return None
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        return self.base_lr / 10 ** sum(1 for boundary in self.decay_steps if boundary < step)


def upstream_schedule(dataset_size: int, epochs: float, batch_size: int, warmup_epochs: float = 5.0) -> StepSchedule:
    """BiT's upstream recipe: lr 0.03·batch/256, weight decay 1e-4, warm-up, ÷10 at 1/3, 2/3 and 8/9 of training."""
    steps_per_epoch = max(1, dataset_size // batch_size)
    steps = max(1, round(epochs * steps_per_epoch))
    warmup = min(round(warmup_epochs * steps_per_epoch), steps // 3)
    # ÷10 from the first step at or past each fraction: boundary b decays the steps after it
    decays = [math.ceil(fraction * steps) - 1 for fraction in UPSTREAM_DECAY_FRACTIONS]
    return StepSchedule(steps=steps, warmup_steps=warmup, decay_steps=decays, base_lr=0.03 * batch_size / 256,
                        batch_size=batch_size, weight_decay=1e-4)  # fmt: skip
