"""Train/test (and validation) splits: stratified per class, or class-disjoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from runner.config import ConfigError, DataConfig
from runner.data.image_set import ImageSet


@dataclass
class Splits:
    train: ImageSet
    test: ImageSet
    val: Optional[ImageSet] = None


def _stratified(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, hold out round(fraction·n) samples (at least 1, leaving at least 1)."""
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _held_out_classes(labels: np.ndarray, fraction: float, rng: np.random.Generator,
                      key: str) -> tuple[np.ndarray, np.ndarray]:
    """Hold out round(fraction·classes) whole classes (at least 1, leaving at least 2)."""
    classes = rng.permutation(np.unique(labels))
    if len(classes) < 3:
        raise ConfigError(key, fraction, f"a split of at least 3 classes into whole classes (there are {len(classes)})")
    n_held = min(max(1, int(round(fraction * len(classes)))), len(classes) - 2)
    held = np.isin(labels, classes[:n_held])
    return np.flatnonzero(~held), np.flatnonzero(held)


def split_dataset(ds: ImageSet, cfg: DataConfig) -> Splits:
    """Train/test (and optional validation) split from cfg.split_seed.

    stratified: every class appears in train and test. class_disjoint: whole classes
    are held out, so the test measures generalisation to unseen identities; so is the
    validation split then (held-out training classes, scored leave-one-out like the test).
    n_per_class then caps the training images per class (the test split is untouched).
    """
    rng = np.random.default_rng(cfg.split_seed)
    labels = ds.labels.numpy()
    if cfg.split == "stratified":
        train_idx, test_idx = _stratified(labels, cfg.test_fraction, rng)
    else:
        train_idx, test_idx = _held_out_classes(labels, cfg.test_fraction, rng, "data.test_fraction")
    if cfg.n_per_class is not None:
        train_idx = np.sort(np.concatenate([rng.permutation(train_idx[labels[train_idx] == c])[:cfg.n_per_class]
                                            for c in np.unique(labels[train_idx])]))
    val = None
    if cfg.val_fraction > 0:
        if cfg.split == "class_disjoint":  # held-out classes like the test: tune validates on unseen classes
            keep, held = _held_out_classes(labels[train_idx], cfg.val_fraction, rng, "data.val_fraction")
        else:
            keep, held = _stratified(labels[train_idx], cfg.val_fraction, rng)
        train_idx, val = train_idx[keep], ds.subset(train_idx[held])
    return Splits(ds.subset(train_idx), ds.subset(test_idx), val)
