"""Data sets in memory, train/val/test splits and the P×K batch sampler.

Every loader returns an `ImageSet`: uint8 images (N×C×H×W), integer labels, class
names and the index of each image in its source, so that a split can always be
traced back to the files it came from. Small-data metric learning lives in memory:
batches are gathered by indexing tensors, never by a per-sample DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from runner.config import ConfigError, DataConfig


@dataclass
class ImageSet:
    images: torch.Tensor
    """uint8, N×C×H×W."""
    labels: torch.Tensor
    """int64, N, contiguous class ids 0..C-1."""
    class_names: list[str]
    index: torch.Tensor
    """int64, N: position of each image in its source data set."""
    parents: Optional[list[str]] = None
    """Optional coarse class of each class (a known two-level hierarchy)."""
    meta: dict = field(default_factory=dict)
    """Free-form facts about the source (root, family) stored in run.h5."""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray | torch.Tensor) -> "ImageSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.class_names, self.index[idx],
                        self.parents, self.meta)


def load_digits_set(cfg: DataConfig) -> ImageSet:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes), shipped inside the package."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return ImageSet(images, labels, [str(c) for c in range(10)], torch.arange(len(labels)),
                    meta={"family": "digits"})


def _loaders() -> dict[str, Callable[[DataConfig], ImageSet]]:
    """Data set name -> loader. File formats live in runner.datasets."""
    from runner import datasets
    return {"digits": load_digits_set, **datasets.LOADERS}


def dataset_names() -> list[str]:
    return sorted(_loaders())


def load_dataset(cfg: DataConfig) -> ImageSet:
    """Load the data set named by cfg.name, drop rare classes and resize when asked."""
    loaders = _loaders()
    if cfg.name not in loaders:
        raise ConfigError("data.name", cfg.name, f"one of {', '.join(sorted(loaders))}")
    ds = loaders[cfg.name](cfg)
    ds = drop_rare_classes(ds, cfg.min_images_per_class)
    if cfg.image_size is not None and ds.images.shape[-1] != cfg.image_size:
        ds.images = resize_uint8(ds.images, cfg.image_size)
    return ds


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 N×C×H×W batch to size×size (antialiased bilinear)."""
    out = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def drop_rare_classes(ds: ImageSet, min_count: int) -> ImageSet:
    """Keep classes with at least min_count images and renumber labels 0..C-1."""
    counts = torch.bincount(ds.labels, minlength=len(ds.class_names))
    keep = torch.nonzero(counts >= min_count).flatten()
    if len(keep) == len(ds.class_names):
        return ds
    if len(keep) < 2:
        raise ConfigError("data.min_images_per_class", min_count,
                          f"a value that leaves at least 2 classes (largest class has {int(counts.max())})")
    remap = torch.full((len(ds.class_names),), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    rows = torch.nonzero(remap[ds.labels] >= 0).flatten()
    out = ds.subset(rows)
    out.labels = remap[out.labels]
    out.class_names = [ds.class_names[i] for i in keep.tolist()]
    if ds.parents is not None:
        out.parents = [ds.parents[i] for i in keep.tolist()]
    return out


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
        n_test = min(max(1, int(round(cfg.test_fraction * len(classes)))), len(classes) - 2)
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
    """

    def __init__(self, labels, batch_size: int, samples_per_class: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.labels = np.asarray(labels)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        self.p = min(batch_size // samples_per_class, len(self.by_class) // world_size)
        if self.p < 2:
            raise ConfigError("train.batch_size", batch_size,
                              f"a setting with at least 2 classes per rank ({len(self.by_class)} classes, "
                              f"{world_size} ranks)")
        self.k = batch_size // self.p

    def __len__(self) -> int:
        return max(1, len(self.labels) // (self.p * self.k * self.world_size))

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

    def __init__(self, labels, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n = len(labels)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size

    def __len__(self) -> int:
        return max(1, self.n // (self.batch_size * self.world_size))

    def batches(self, epoch: int) -> list[np.ndarray]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        step = self.batch_size * self.world_size
        return [perm[i * step:(i + 1) * step][self.rank::self.world_size] for i in range(len(self))]


def main() -> None:
    """`python -m runner.data pack SRC OUT.h5`: the tools live in runner.pack."""
    from runner.pack import main as pack_main
    raise SystemExit(pack_main())


if __name__ == "__main__":
    main()
