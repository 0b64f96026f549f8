"""Balanced, seeded few-shot subsets: the same K images per class on every run and machine."""

from __future__ import annotations

import numpy as np


def few_shot_subset(labels: np.ndarray, shots: int, seed: int, class_names: list[str] | None = None) -> np.ndarray:
    """Indices of `shots` examples of every class, chosen by a seeded permutation within each class.

    NumPy's PCG64 generator gives identical streams on every platform, so (labels, shots, seed)
    fully determines the subset; the result is sorted by class, then by the permutation.
    """
    labels = np.asarray(labels)
    if shots < 1:
        raise ValueError(f"--shots must be ≥ 1, got {shots}.")
    chosen = []
    for class_id in np.unique(labels):
        members = np.flatnonzero(labels == class_id)
        if len(members) < shots:
            name = repr(class_names[int(class_id)]) if class_names else str(int(class_id))
            raise ValueError(
                f"Class {name} has only {len(members)} examples, fewer than --shots {shots}: lower --shots."
            )
        rng = np.random.default_rng([seed, int(class_id)])
        chosen.append(members[rng.permutation(len(members))[:shots]])
    return np.concatenate(chosen)
