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


def n_train_classes(n_classes: int, cfg: DataConfig) -> int:
    """Classes in the training split of a data set with n_classes (after rare ones are dropped).

    class_disjoint holds out round(test_fraction · n) classes, at least 1, leaving at least 2
    to train on; with fewer than 3 classes there is no such split: ConfigError.
    """
    if cfg.split == "stratified":
        return n_classes
    if n_classes < 3:
        raise ConfigError("data.split", cfg.split, f"stratified: the data has {n_classes} classes, and "
                          "class_disjoint needs at least 3 (2 to train on, 1 to test)")
    return n_classes - _n_test_classes(n_classes, cfg.test_fraction)


def _n_test_classes(n_classes: int, fraction: float) -> int:
    return min(max(1, int(round(fraction * n_classes))), n_classes - 2)


def split_dataset(ds: ImageSet, cfg: DataConfig) -> Splits:
    """Train/test (and optional validation) split from cfg.split_seed.

    stratified: every class appears in train and test. class_disjoint: whole classes
    are held out, so the test measures generalisation to unseen identities.
    n_per_class then caps the training images per class (the test split is untouched).
    """
    rng = np.random.default_rng(cfg.split_seed)
    labels = ds.labels.numpy()
    if cfg.split == "stratified":
        train_idx, test_idx = _stratified(labels, cfg.test_fraction, rng)
    else:
        classes = rng.permutation(np.unique(labels))
        n_test = len(classes) - n_train_classes(len(classes), cfg)
        test_mask = np.isin(labels, classes[:n_test])
        train_idx, test_idx = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
    if cfg.n_per_class is not None:
        train_idx = np.sort(np.concatenate([rng.permutation(train_idx[labels[train_idx] == c])[:cfg.n_per_class]
                                            for c in np.unique(labels[train_idx])]))
    val = None
    if cfg.val_fraction > 0:
        keep, held = _stratified(labels[train_idx], cfg.val_fraction, rng)
        train_idx, val = train_idx[keep], ds.subset(train_idx[held])
    return Splits(ds.subset(train_idx), ds.subset(test_idx), val)
