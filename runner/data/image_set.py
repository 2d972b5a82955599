"""`ImageSet`: the in-memory form every loader returns, and the operations on it.

uint8 images (N×C×H×W), integer labels, class names and the index of each image in
its source, so that a split can always be traced back to the files it came from; and,
where the source knows them, per-image facts that splits use: the set's own split
(`partition`), the file names (`files`) and the groups of images that belong together
(`groups`, from data.group_by over the file names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Optional

import numpy as np
import torch

from runner.config import ConfigError, check_group_by


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
    partition: Optional[np.ndarray] = None
    """Optional str, N: the set's own split of each image (train, test, query, gallery; '' for
    none), used by data.split: official."""
    files: Optional[np.ndarray] = None
    """Optional str, N: each image's file, relative to the set's folder (loaders that read files)."""
    groups: Optional[np.ndarray] = None
    """Optional str, N: the group of each image (data.group_by); a group stays on one side of a split."""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray | torch.Tensor) -> "ImageSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = idx.numpy()
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return ImageSet(self.images[idx], self.labels[idx], self.class_names, self.index[idx],
                        self.parents, self.meta, pick(self.partition), pick(self.files), pick(self.groups))


@dataclass(frozen=True)
class DataShape:
    """What a loader will return, read from listings and headers only (no image decoded).

    The checks before submission use it: the model's input shape, and how many classes
    (and images per class) the sampler and the split will see.
    """
    channels: int
    height: int
    width: int
    class_counts: tuple[int, ...]
    """Images per class, in label order (before data.min_images_per_class drops any)."""

    def resized(self, size: Optional[int]) -> "DataShape":
        """The shape after load_dataset's resize to size×size (it resizes when the width differs)."""
        if size is None or self.width == size:
            return self
        return DataShape(self.channels, size, size, self.class_counts)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 N×C×H×W batch to size×size (antialiased bilinear)."""
    out = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def drop_rare_classes(ds: ImageSet, min_count: int) -> ImageSet:
    """Keep classes with at least min_count images and renumber labels 0..C-1."""
    counts = torch.bincount(ds.labels, minlength=len(ds.class_names))
    kept_counts(counts.tolist(), min_count)
    keep = torch.nonzero(counts >= min_count).flatten()
    if len(keep) == len(ds.class_names):
        return ds
    remap = torch.full((len(ds.class_names),), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    rows = torch.nonzero(remap[ds.labels] >= 0).flatten()
    out = ds.subset(rows)
    out.labels = remap[out.labels]
    out.class_names = [ds.class_names[i] for i in keep.tolist()]
    if ds.parents is not None:
        out.parents = [ds.parents[i] for i in keep.tolist()]
    return out


def assign_groups(ds: ImageSet, pattern: str, name: str) -> ImageSet:
    """Set ds.groups to the first capture group of `pattern` searched in each file's base name."""
    if ds.files is None:
        raise ConfigError("data.group_by", pattern, "a data set whose images have file names (folder, cub, "
                          f"cars, sop, inshop, or h5 packed from one of them); {name} has none")
    check_group_by(pattern)
    regex = re.compile(pattern)
    groups = []
    for path in ds.files.tolist():
        found = regex.search(PurePosixPath(path).name)
        if found is None or found.group(1) is None:
            raise ConfigError("data.group_by", pattern, f"a pattern whose group matches every file name "
                              f"(not {PurePosixPath(path).name!r}, {path})")
        groups.append(found.group(1))
    ds.groups = np.asarray(groups, dtype=str)
    return ds


def kept_counts(counts: list[int] | tuple[int, ...], min_count: int) -> list[int]:
    """Images per class of the classes drop_rare_classes keeps; ConfigError if fewer than 2 remain."""
    kept = [c for c in counts if c >= min_count]
    if len(kept) < 2:
        raise ConfigError("data.min_images_per_class", min_count,
                          f"a value that leaves at least 2 classes (largest class has {max(counts, default=0)})")
    return kept
