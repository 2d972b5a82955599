"""Train/test (and validation) splits: stratified per class, class-disjoint, or the set's own.

With data.group_by, every image of one group (a track, an object, a session) stays on one
side of each stratified cut (train/test and train/val). What was done is recorded in the
splits' `meta["split"]`, which the run stores.
"""

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
    query: Optional[ImageSet] = None
    """With `gallery`: the set's own query/gallery split (In-Shop); `test` is then their union.
    Queries are retrieved among the gallery images; None for every other split."""
    gallery: Optional[ImageSet] = None


def _stratified(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, hold out round(fraction·n) samples (at least 1, leaving at least 1)."""
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _stratified_groups(labels: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator,
                       ds: ImageSet, pattern: str, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Per class, hold out round(fraction·g) of its g groups (at least 1, leaving at least 1).

    A group is a class's images sharing a key: keys are not compared across classes (GTSRB
    numbers its tracks per class folder). A class with one group cannot be split: ConfigError.
    """
    keep, held = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keys, inverse = np.unique(groups[rows], return_inverse=True)
        if len(keys) < 2:
            raise ConfigError("data.group_by", pattern, f"at least 2 groups in every class to split off {side} "
                              f"(class {ds.class_names[c]!r} has one: {str(keys[0])!r}); drop such classes from "
                              "data.root or use split: class_disjoint")
        chosen = rng.permutation(len(keys))[:min(max(1, int(round(fraction * len(keys)))), len(keys) - 1)]
        out = np.isin(inverse.reshape(-1), chosen)
        held.append(rows[out])
        keep.append(rows[~out])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _official(ds: ImageSet, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of the set's own split; test = test, or query + gallery."""
    why = f" ({ds.meta['official']})" if ds.meta.get("official") else ""
    if ds.partition is None:
        raise ConfigError("data.split", cfg.split, f"a data set with its own split; {cfg.name} has none{why}: "
                          "use stratified or class_disjoint")
    train = np.flatnonzero(ds.partition == "train")
    test = np.flatnonzero(np.isin(ds.partition, ("test", "query", "gallery")))
    if not len(train) or not len(test):
        present = sorted(set(ds.partition.tolist()) - {""}) or ["nothing"]
        raise ConfigError("data.split", cfg.split, f"a data set with both parts of its own split; {cfg.name} "
                          f"has only {' and '.join(present)} here{why}")
    return train, test


def _held_out_classes(labels: np.ndarray, fraction: float, rng: np.random.Generator,
                      key: str) -> tuple[np.ndarray, np.ndarray]:
    """Hold out round(fraction·classes) whole classes (at least 1, leaving at least 2)."""
    classes = rng.permutation(np.unique(labels))
    if len(classes) < 3:
        raise ConfigError(key, fraction, f"a split of at least 3 classes into whole classes (there are {len(classes)})")
    n_held = min(max(1, int(round(fraction * len(classes)))), len(classes) - 2)
    held = np.isin(labels, classes[:n_held])
    return np.flatnonzero(~held), np.flatnonzero(held)


def _named_classes(ds: ImageSet, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) holding out the classes of these names (data.test_classes)."""
    unknown = [n for n in names if n not in ds.class_names]
    if unknown:
        shown = ", ".join(ds.class_names[:12]) + (", ..." if len(ds.class_names) > 12 else "")
        raise ConfigError("data.test_classes", list(names), f"names of classes of the data set ({shown}); "
                          f"{', '.join(map(repr, unknown))} is not one")
    if len(ds.class_names) - len(names) < 2:
        raise ConfigError("data.test_classes", list(names), f"at most {len(ds.class_names) - 2} of the "
                          f"{len(ds.class_names)} classes, leaving 2 to train on")
    held = np.isin(ds.labels.numpy(), [ds.class_names.index(n) for n in names])
    return np.flatnonzero(~held), np.flatnonzero(held)


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
    if cfg.test_classes is not None:
        return n_classes - len(cfg.test_classes)
    return n_classes - _n_test_classes(n_classes, cfg.test_fraction)


def _n_test_classes(n_classes: int, fraction: float) -> int:
    return min(max(1, int(round(fraction * n_classes))), n_classes - 2)


def split_dataset(ds: ImageSet, cfg: DataConfig) -> Splits:
    """Train/test (and optional validation) split from cfg.split_seed.

    stratified: every class appears in train and test. class_disjoint: whole classes
    are held out, so the test measures generalisation to unseen identities; so is the
    validation split then (held-out training classes, scored leave-one-out like the test).
    official: the data set's own split (ds.partition), with In-Shop's query and gallery kept apart.
    n_per_class then caps the training images per class (the test split is untouched).
    """
    rng = np.random.default_rng(cfg.split_seed)
    labels = ds.labels.numpy()
    grouped = cfg.group_by is not None
    if grouped and ds.groups is None:
        raise ConfigError("data.group_by", cfg.group_by, "an ImageSet with groups (runner.data.load_dataset "
                          "assigns them from the file names)")
    if cfg.split == "official":
        train_idx, test_idx = _official(ds, cfg)
    elif cfg.split == "stratified" and grouped:
        train_idx, test_idx = _stratified_groups(labels, ds.groups, cfg.test_fraction, rng, ds, cfg.group_by, "test")
    elif cfg.split == "stratified":
        train_idx, test_idx = _stratified(labels, cfg.test_fraction, rng)
    elif cfg.test_classes is not None:
        train_idx, test_idx = _named_classes(ds, cfg.test_classes)
    else:
        train_idx, test_idx = _held_out_classes(labels, cfg.test_fraction, rng, "data.test_fraction")
    if cfg.n_per_class is not None:
        train_idx = np.sort(np.concatenate([rng.permutation(train_idx[labels[train_idx] == c])[:cfg.n_per_class]
                                            for c in np.unique(labels[train_idx])]))
    val_idx = None
    if cfg.val_fraction > 0:
        if cfg.split == "class_disjoint":  # held-out classes like the test: tune validates on unseen classes
            keep, held = _held_out_classes(labels[train_idx], cfg.val_fraction, rng, "data.val_fraction")
        elif grouped:
            keep, held = _stratified_groups(labels[train_idx], ds.groups[train_idx], cfg.val_fraction, rng, ds,
                                            cfg.group_by, "validation")
        else:
            keep, held = _stratified(labels[train_idx], cfg.val_fraction, rng)
        train_idx, val_idx = train_idx[keep], train_idx[held]
    return _assemble(ds, cfg, train_idx, test_idx, val_idx)


def _assemble(ds: ImageSet, cfg: DataConfig, train_idx: np.ndarray, test_idx: np.ndarray,
              val_idx: Optional[np.ndarray]) -> Splits:
    """The Splits of these rows, each part's meta carrying the record of how they were made."""
    parts = {"train": train_idx, "test": test_idx}
    if val_idx is not None:
        parts["val"] = val_idx
    if cfg.split == "official" and np.isin(ds.partition[test_idx], ("query", "gallery")).any():
        parts["query"] = test_idx[ds.partition[test_idx] == "query"]
        parts["gallery"] = test_idx[ds.partition[test_idx] == "gallery"]
    record = {"split": cfg.split, "split_seed": cfg.split_seed, "sizes": {k: int(len(v)) for k, v in parts.items()}}
    if cfg.split == "official":
        record["official"] = ds.meta.get("official", "")
        # images the set's split leaves out (LFW people named in neither View 1 list)
        record["unassigned"] = int(np.isin(ds.partition, ("train", "test", "query", "gallery"), invert=True).sum())
    elif cfg.test_classes is not None:
        record["test_classes"] = list(cfg.test_classes)
    else:
        record["test_fraction"] = cfg.test_fraction
    if cfg.group_by is not None:
        record["group_by"] = cfg.group_by
        labels = ds.labels.numpy()
        record["groups"] = {k: len(set(zip(labels[v].tolist(), ds.groups[v].tolist()))) for k, v in parts.items()}
    meta = {**ds.meta, "split": record}
    subsets = {k: ds.subset(v) for k, v in parts.items()}
    for part in subsets.values():
        part.meta = meta
    return Splits(subsets["train"], subsets["test"], subsets.get("val"), subsets.get("query"), subsets.get("gallery"))
