"""Which examples a training step's global batch holds: a pure function of (seed, step), so `--workers`,
`--resume` and the number of processes never change what a run sees.

A random-access dataset draws each epoch as one seeded permutation (`ShuffledOrder`). A sharded dataset is read
a shard at a time, so its order keeps to a few shards at once (`LaneOrder`): each epoch the shards are permuted
and cut into lanes; every step takes an equal slice from every lane, in a seeded order within each shard.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

MAX_LANES = 8  # shards a step reads from at once: more mixes better; each costs a shard held by the reader


@functools.lru_cache(maxsize=4)
def _epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, size]).permutation(size)


def batch_indices(step: int, batch_size: int, size: int, seed: int) -> np.ndarray:
    """Dataset indices of a step's global batch: consecutive slices of per-epoch seeded permutations."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    return np.array([_epoch_order(size, seed, int(p // size))[p % size] for p in positions])


@dataclasses.dataclass(frozen=True)
class ShuffledOrder:
    """Every epoch a seeded permutation of all examples; MixUp partners come from the whole global batch."""

    size: int
    batch_size: int
    seed: int
    lanes: int = 1

    def indices(self, step: int) -> np.ndarray:
        return batch_indices(step, self.batch_size, self.size, self.seed)

    def position(self, step: int) -> dict[str, int]:
        """Where the stream stands before `step` (for the checkpoint; the order itself follows from the step)."""
        epoch, offset = divmod(step * self.batch_size, self.size)
        return {"epoch": epoch, "offset": offset}


def lane_count(shards: int, batch_size: int) -> int:
    """Lanes of a sharded run: the most, up to MAX_LANES and the shard count, that divide the batch evenly.
    It depends on the data and the batch only, never on processes or workers, so neither changes the order."""
    return max(lanes for lanes in range(1, min(MAX_LANES, shards) + 1) if batch_size % lanes == 0)


class LaneOrder:
    """The order of a sharded dataset, whose examples are numbered shard after shard (`counts[s]` in shard s).

    Epoch e: the shards in a seeded permutation, each shard's examples in a seeded permutation of their own,
    makes one stream; the stream is cut into `lanes` equal segments (a remainder of fewer than `lanes` examples
    waits for the next epoch's draw). Batch position i belongs to lane i // (batch_size / lanes), and each step
    takes the next batch_size / lanes examples of every lane. A process whose batch positions cover some lanes
    reads only their shards; MixUp partners are drawn within a lane (`lanes` blocks of the batch) for the same
    reason.
    """

    def __init__(self, counts: list[int], batch_size: int, seed: int, lanes: int):
        self.counts, self.batch_size, self.seed, self.lanes = (
            np.asarray(counts, dtype=np.int64),
            batch_size,
            seed,
            lanes,
        )
        if batch_size % lanes or self.counts.sum() < lanes:
            raise ValueError(f"{lanes} lanes need a batch size divisible by them and at least as many examples.")
        self.per_lane = int(self.counts.sum()) // lanes  # examples of an epoch in each lane
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # a few, kept: steps move forward
        self._shard_orders: dict[tuple[int, int], np.ndarray] = {}

    def indices(self, step: int) -> np.ndarray:
        take = self.batch_size // self.lanes
        epochs, offsets = np.divmod(step * take + np.arange(take), self.per_lane)
        return np.array([
            self._example(int(epoch), lane * self.per_lane + int(offset))
            for lane in range(self.lanes) for epoch, offset in zip(epochs, offsets)
        ])  # fmt: skip

    def position(self, step: int) -> list[dict[str, int]]:
        """Where each lane stands before `step` (epoch, shard, offset in that shard's order): the checkpoint's
        record of the stream, for a person reading it; the order itself follows from the step."""
        epoch, offset = divmod(step * (self.batch_size // self.lanes), self.per_lane)
        return [
            {"lane": lane, "epoch": epoch, **dict(zip(("shard", "offset"), self._locate(epoch, lane * self.per_lane + offset)))}
            for lane in range(self.lanes)
        ]  # fmt: skip

    def _example(self, epoch: int, position: int) -> int:
        """The dataset index at `position` of epoch `epoch`'s stream."""
        shard, within = self._locate(epoch, position)
        key = (epoch, shard)
        if key not in self._shard_orders:
            if len(self._shard_orders) >= 4 * MAX_LANES:
                self._shard_orders.pop(next(iter(self._shard_orders)))
            self._shard_orders[key] = np.random.default_rng([self.seed, epoch, shard]).permutation(self.counts[shard])
        return int(self.starts[shard] + self._shard_orders[key][within])

    def _locate(self, epoch: int, position: int) -> tuple[int, int]:
        """(shard, offset within it) of a position of epoch `epoch`'s stream."""
        if epoch not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            shards = np.random.default_rng([self.seed, epoch, len(self.counts)]).permutation(len(self.counts))
            self._epochs[epoch] = shards, np.cumsum(self.counts[shards])
        shards, ends = self._epochs[epoch]
        slot = int(np.searchsorted(ends, position, side="right"))
        return int(shards[slot]), position - (int(ends[slot - 1]) if slot else 0)
