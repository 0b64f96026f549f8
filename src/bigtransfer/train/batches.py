"""Which examples each micro-batch holds, loading them (in worker processes), and mixing them on the device.

Every random choice (which images, which crop, which MixUp λ and partners) is drawn from a
generator seeded with (seed, step, position in the global batch). A micro-batch's pixels therefore
depend on nothing but its step and positions — not on the process or worker that loads them — so
`--workers`, `--resume`, `--batch-split` and multi-process runs all reproduce the same updates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data.datasets import LabelledImages
from ..data.device import gather_pixels, to_device
from ..data.order import LaneOrder, ShuffledOrder
from ..data.workers import LoadedImages, load_examples
from ..processing.transform import EvalTransform

MIXUP_STREAM = 1 << 30  # generator key of a step's MixUp draw, beyond any batch position
# Images a worker loads per hand-over. Each hand-over has a fixed cost in the main process (a
# shared-memory segment to map, a message to unpickle): chunks of 8 capped the main process at
# about 3,000 images/s on the 2-core machine, chunks of 32 at about 12,000.
IMAGES_PER_CHUNK = 32
Augment = Callable[..., np.ndarray]  # (image, rng=generator) → H×W×3 uint8; must pickle for worker processes


def mixup_draw(seed: int, step: int, alpha: float, batch_size: int, blocks: int = 1) -> tuple[float, np.ndarray] | None:
    """One λ ~ Beta(α, α) per optimiser step, and a partner permutation over the global batch — within each of
    `blocks` equal blocks of it when the data order has lanes (a process then reads only its own lanes)."""
    if alpha <= 0:
        return None
    rng = np.random.default_rng([seed, step, MIXUP_STREAM])
    lam = float(rng.beta(alpha, alpha))
    size = batch_size // blocks
    return lam, np.concatenate([block * size + rng.permutation(size) for block in range(blocks)])


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a global batch is cut: across processes, into micro-batches, and into loading chunks."""

    batch_size: int
    world_size: int = 1
    rank: int = 0
    batch_split: int = 1
    chunks: int = 1  # loading chunks per micro-batch (`chunks_per_micro_batch`)

    def __post_init__(self):
        if self.batch_size % (self.world_size * self.batch_split):
            raise ValueError(
                f"--batch-size {self.batch_size} must divide evenly into {self.world_size} processes × "
                f"--batch-split {self.batch_split} micro-batches."
            )

    @property
    def micro(self) -> int:
        return self.batch_size // self.world_size // self.batch_split

    def positions(self, part: int) -> range:
        """Global-batch positions of this process's micro-batch `part`."""
        first = self.rank * self.batch_size // self.world_size + part * self.micro
        return range(first, first + self.micro)


def chunks_per_micro_batch(micro: int, workers: int) -> int:
    """Loading chunks per micro-batch: about IMAGES_PER_CHUNK images each, at most one per worker."""
    return max(1, min(workers, -(-micro // IMAGES_PER_CHUNK)))


@dataclasses.dataclass(frozen=True)
class MicroBatchPlan:
    step: int
    positions: range
    indices: np.ndarray  # dataset index of every position of the global batch
    mixup: tuple[float, np.ndarray] | None  # (λ, partner position of every position)

    def partner(self, position: int) -> int:
        return int(self.mixup[1][position])

    def needed(self) -> np.ndarray:
        """Positions whose images this micro-batch uses, each once: its own and their MixUp partners."""
        own = np.asarray(self.positions)
        return np.unique(np.concatenate([own, self.mixup[1][own]])) if self.mixup else own


@dataclasses.dataclass(frozen=True)
class TrainingExamples:
    """The loading work of a run, from `first_step` on: item i is one chunk of one micro-batch."""

    dataset: LabelledImages
    order: ShuffledOrder | LaneOrder  # the dataset's `training_order` for this batch size and seed
    augment: Augment
    seed: int
    layout: Layout
    mixup_alpha: float
    first_step: int
    steps: int

    def __len__(self) -> int:
        return max(0, self.steps - self.first_step) * self.layout.batch_split * self.layout.chunks

    def plan(self, step: int, part: int) -> MicroBatchPlan:
        batch_size = self.layout.batch_size
        return MicroBatchPlan(
            step, self.layout.positions(part), self.order.indices(step),
            mixup_draw(self.seed, step, self.mixup_alpha, batch_size, self.order.lanes),
        )  # fmt: skip

    def __getitem__(self, item: int) -> LoadedImages:
        steps_done, within_step = divmod(item, self.layout.batch_split * self.layout.chunks)
        part, chunk = divmod(within_step, self.layout.chunks)
        step = self.first_step + steps_done
        plan = self.plan(step, part)
        positions = np.array_split(plan.needed(), self.layout.chunks)[chunk]
        return load_examples(
            self.dataset, [int(plan.indices[p]) for p in positions], [int(p) for p in positions],
            lambda image, position: self.augment(image, rng=np.random.default_rng([self.seed, step, position])),
        )  # fmt: skip


@dataclasses.dataclass
class MicroBatch:
    pixels: torch.Tensor  # float32 N×3×H×W on the device, MixUp applied
    labels: torch.Tensor  # class ids (N), or multi-label targets (float32 N×C, MixUp applied)
    partner_labels: torch.Tensor | None  # the MixUp partners' class ids (single-label only)
    mixup_lambda: float

    def __len__(self) -> int:
        return len(self.labels)


def assemble(
    plan: MicroBatchPlan,
    loaded: Sequence[LoadedImages],
    device: torch.device,
    channels_last: bool,
    transform: EvalTransform,
) -> MicroBatch | None:
    """The micro-batch on `device` from its loaded chunks, without a host synchronisation.

    An example is dropped when its image, or its MixUp partner's, could not be read; None when none is left.
    """
    slot = {position: i for i, position in enumerate(p for item in loaded for p in item.ids)}
    keep = [p for p in plan.positions if p in slot and (plan.mixup is None or plan.partner(p) in slot)]
    if not keep:
        return None
    pixels = transform.normalise_pixels(gather_pixels(loaded, device), channels_last)
    labels = to_device(torch.tensor([label for item in loaded for label in item.labels]), device)
    if labels.ndim == 2:  # multi-hot rows: the targets of binary cross-entropy
        labels = labels.float()
    first = [slot[p] for p in keep]
    if first != list(range(len(slot))):  # some loaded images are only partners, or some examples dropped
        chosen = to_device(torch.tensor(first), device)
        pixels_first, labels_first = pixels[chosen], labels[chosen]
    else:
        pixels_first, labels_first = pixels, labels
    if plan.mixup is None:
        return MicroBatch(pixels_first, labels_first, None, 1.0)
    lam = plan.mixup[0]
    partners = to_device(torch.tensor([slot[plan.partner(p)] for p in keep]), device)
    mixed = lam * pixels_first + (1 - lam) * pixels[partners]
    mixed = mixed.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if labels.ndim == 2:  # multi-label: the label vectors mix as the pixels do
        return MicroBatch(mixed, lam * labels_first + (1 - lam) * labels[partners], None, lam)
    return MicroBatch(mixed, labels_first, labels[partners], lam)
