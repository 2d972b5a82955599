"""Batch samplers over the training labels: class-balanced P×K and plain shuffled.

Small-data metric learning lives in memory: a sampler yields index batches that the
engine gathers from tensors, never a per-sample DataLoader.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from runner.config import ConfigError


def capped(full_pass: int, max_steps: Optional[int]) -> int:
    """Batches in an epoch: a full pass (at least one batch), at most max_steps."""
    return max(1, full_pass if max_steps is None else min(full_pass, max_steps))


class PKSampler:
    """Class-balanced batches: P classes × K samples, reseeded per epoch, sharded by rank.

    The global batch of an epoch step holds P·world_size classes; rank r takes the
    classes r, r+world, ... so each rank's share is itself a P×K batch. K is a minimum:
    a data set with fewer than P·world_size classes puts all its classes in every batch
    and raises K to fill it (digits: 10 classes × 12 in a batch of 128). Classes with
    fewer than K samples are drawn with replacement.

    Args:
        labels: training labels (N,).
        batch_size: samples per rank per step (P·K).
        samples_per_class: K.
        seed: base seed; epoch e uses (seed, e), so any epoch can be replayed on resume.
        max_steps: at most this many batches per epoch (train.steps_per_epoch); None: a full pass.
    """

    def __init__(self, labels, batch_size: int, samples_per_class: int, seed: int,
                 rank: int = 0, world_size: int = 1, max_steps: Optional[int] = None):
        self.labels = np.asarray(labels)
        self.seed, self.rank, self.world_size, self.max_steps = seed, rank, world_size, max_steps
        self.by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        self.p = min(batch_size // samples_per_class, len(self.by_class) // world_size)
        if self.p < 2:
            raise ConfigError("train.batch_size", batch_size,
                              f"a setting with at least 2 classes per rank ({len(self.by_class)} classes, "
                              f"{world_size} ranks)")
        self.k = batch_size // self.p

    def __len__(self) -> int:
        return capped(len(self.labels) // (self.p * self.k * self.world_size), self.max_steps)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's index batches for `epoch` (deterministic in seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        out = []
        for _ in range(len(self)):
            classes = rng.choice(len(self.by_class), size=self.p * self.world_size, replace=False)
            # every rank draws all picks so the random streams stay identical across ranks
            picks = [rng.choice(self.by_class[c], size=self.k, replace=len(self.by_class[c]) < self.k)
                     for c in classes]
            out.append(np.concatenate(picks[self.rank::self.world_size]))
        return out


class RandomBatchSampler:
    """Plain shuffled batches (the bare-loop baseline), sharded by rank like PKSampler."""

    def __init__(self, labels, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 max_steps: Optional[int] = None):
        self.n = len(labels)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.max_steps = max_steps

    def __len__(self) -> int:
        return capped(self.n // (self.batch_size * self.world_size), self.max_steps)

    def batches(self, epoch: int) -> list[np.ndarray]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        step = self.batch_size * self.world_size
        return [perm[i * step:(i + 1) * step][self.rank::self.world_size] for i in range(len(self))]
