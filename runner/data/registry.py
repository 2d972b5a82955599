"""Data sets by name: `data.name` -> loader (and describer), the one list of names, the checks before submission.

Every loader reads only local files (compute nodes have no internet): a missing root
or file is a one-line ConfigError on `data.root` that points to docs/datasets.md.
Sets of image files are registered by their lister (FILE_SETS: the list of files, no
pixels), the others by their loader (LOADERS); load_dataset decodes the first kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from runner.config import ConfigError, DataConfig, suggest
from runner.data.cars import cars_files
from runner.data.cub import cub_files
from runner.data.folder import describe_folder, folder_files
from runner.data.image_files import ImageFiles, decode_files
from runner.data.image_set import DataShape, ImageSet, assign_groups, drop_rare_classes, kept_counts, resize_uint8
from runner.data.inshop import inshop_files
from runner.data.lfw import describe_lfw, load_lfw
from runner.data.mnist import describe_fashion_mnist, describe_mnist, load_fashion_mnist, load_mnist
from runner.data.packed import describe_pack, read_pack
from runner.data.paths import DEFAULT_SIZE, DOCS
from runner.data.sop import sop_files
from runner.data.streaming import choose_storage, lazy_files, lazy_pack, lazy_tensor
from runner.data.synthetic_signs import DEFAULT_SIZE as SIGNS_SIZE
from runner.data.synthetic_signs import IMAGES_PER_CLASS, class_table, generate_signs


def load_digits_set(cfg: DataConfig) -> ImageSet:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes), shipped inside the package."""
    from sklearn.datasets import load_digits  # here: scikit-learn is ~2 s of import a launcher need not pay
    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return ImageSet(images, labels, [str(c) for c in range(10)], torch.arange(len(labels)),
                    meta={"family": "digits"})


def load_signs(cfg: DataConfig) -> ImageSet:
    """Synthetic traffic signs (runner.data.synthetic_signs); data.root is unused."""
    return generate_signs(cfg.image_size)


def load_h5(cfg: DataConfig) -> ImageSet:
    """A file written by `python -m runner.data pack`, read whole into memory."""
    return read_pack(cfg.root)


LOADERS: dict[str, Callable[[DataConfig], ImageSet]] = {
    "digits": load_digits_set,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "lfw": load_lfw,
    "signs": load_signs,
    "h5": load_h5,
}
FILE_SETS: dict[str, Callable[[DataConfig], ImageFiles]] = {
    "folder": folder_files,
    "cub": cub_files,
    "cars": cars_files,
    "sop": sop_files,
    "inshop": inshop_files,
}
"""Sets of image files, decoded to data.image_size (default 64) by load_dataset."""
ROOT_KINDS = {"mnist": "dir", "fashion_mnist": "dir", "folder": "dir", "lfw": "dir", "h5": "file",
              "cub": "dir", "cars": "dir", "sop": "dir", "inshop": "dir"}
"""Loaders that read data.root, and whether it names a directory or a file."""
NO_OFFICIAL_SPLIT = ("digits", "signs")
"""Sets that define no split of their own (data.split: official is refused before loading); a folder
has one only with train/, query/ and gallery/ sub-folders (checked once data.root is known)."""


DIGITS_PER_CLASS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
"""Images per class of scikit-learn's load_digits (tests/test_data.py checks it against the set): validating a
digits grid needs no scikit-learn import (~2 s)."""


def describe_digits(cfg: DataConfig) -> DataShape:
    return DataShape(1, 8, 8, DIGITS_PER_CLASS)


def describe_signs(cfg: DataConfig) -> DataShape:
    size = cfg.image_size or SIGNS_SIZE
    return DataShape(3, size, size, (IMAGES_PER_CLASS,) * len(class_table()[0]))


def describe_files(files: ImageFiles, cfg: DataConfig) -> DataShape:
    """A set of image files, from its listing: colour at data.image_size (default 64)."""
    size = cfg.image_size or DEFAULT_SIZE
    return DataShape(3, size, size, tuple(np.bincount(files.labels, minlength=len(files.class_names)).tolist()))


DESCRIBERS: dict[str, Callable[[DataConfig], DataShape]] = {
    "digits": describe_digits,
    "mnist": describe_mnist,
    "fashion_mnist": describe_fashion_mnist,
    "folder": describe_folder,
    "lfw": describe_lfw,
    "signs": describe_signs,
    "h5": lambda cfg: describe_pack(cfg.root),
    **{name: (lambda cfg, lister=lister: describe_files(lister(cfg), cfg))
       for name, lister in (("cub", cub_files), ("cars", cars_files), ("sop", sop_files), ("inshop", inshop_files))},
}
"""Per loader, what it will return read from listings and headers only (see describe_data)."""


def dataset_names() -> list[str]:
    return sorted([*LOADERS, *FILE_SETS])


def check_name(name: str) -> None:
    """data.name is a known loader, or a one-line ConfigError with a close match."""
    if name not in LOADERS and name not in FILE_SETS:
        raise ConfigError("data.name", name, f"one of {', '.join(dataset_names())}{suggest(name, dataset_names())}")


def load_dataset(cfg: DataConfig, progress: bool = False, ranks: int = 1) -> ImageSet:
    """Load the data set named by cfg.name, group it, drop rare classes and resize when asked.

    progress: a bar on stderr while image files are decoded (runner.data pack).
    ranks: processes on this node that each load the set (data.storage: auto divides the memory).
    With data.storage stream (or auto choosing it) `images` is a runner.data.streaming.LazyImages
    and meta["storage"] says what was chosen and why.
    """
    check_name(cfg.name)
    storage, why = _storage(cfg, ranks)
    if storage == "stream":
        ds = _load_lazy(cfg)
    elif cfg.name in FILE_SETS:
        ds = decode_files(FILE_SETS[cfg.name](cfg), cfg.image_size or DEFAULT_SIZE, progress)
    else:
        ds = LOADERS[cfg.name](cfg)
    ds.meta = {**ds.meta, "storage": storage, "storage_reason": why}
    if cfg.group_by is not None:
        ds = assign_groups(ds, cfg.group_by, cfg.name)
    ds = drop_rare_classes(ds, cfg.min_images_per_class)
    if storage == "memory" and cfg.image_size is not None and ds.images.shape[-1] != cfg.image_size:
        ds.images = resize_uint8(ds.images, cfg.image_size)
    return ds


def _storage(cfg: DataConfig, ranks: int) -> tuple[str, str]:
    """data.storage resolved; auto reads the set's size from its listing or header (describe_data)."""
    if cfg.storage != "auto":
        return cfg.storage, f"data.storage: {cfg.storage}"
    shape = DESCRIBERS[cfg.name](cfg).resized(cfg.image_size)
    return choose_storage(cfg, sum(shape.class_counts), shape.channels, shape.width, ranks)


def _load_lazy(cfg: DataConfig) -> ImageSet:
    """The set with its images left where they are (stream mode)."""
    if cfg.name in FILE_SETS:
        return lazy_files(FILE_SETS[cfg.name](cfg), cfg.image_size or DEFAULT_SIZE)
    if cfg.name == "h5":
        ds = read_pack(cfg.root, with_images=False)
        _, channels, _, side = ds.images.shape
        return lazy_pack(ds, ds.meta["root"], channels, side, cfg.image_size)
    return lazy_tensor(LOADERS[cfg.name](cfg), cfg.image_size)


def check_data(cfg: DataConfig) -> None:
    """Cheap checks that need no loading (before submission): the name, the split, that data.root exists."""
    check_name(cfg.name)
    if cfg.split == "official" and cfg.name in NO_OFFICIAL_SPLIT:
        raise ConfigError("data.split", cfg.split, f"a data set with its own split; {cfg.name} has none: "
                          "use stratified or class_disjoint")
    kind = ROOT_KINDS.get(cfg.name)
    if kind is None:
        return
    root = Path(cfg.root).expanduser() if cfg.root else None
    if root is None or not (root.is_dir() if kind == "dir" else root.is_file()):
        what = "an existing directory" if kind == "dir" else "an existing file"
        raise ConfigError("data.root", cfg.root, f"{what} for data.name {cfg.name} ({DOCS})")
    if cfg.split == "official" and cfg.name == "folder" and not all((root / p).is_dir() for p in ("train", "query",
                                                                                                   "gallery")):
        raise ConfigError("data.split", cfg.split, "stratified or class_disjoint for a folder of class folders "
                          "(official needs train/, query/ and gallery/ sub-folders of class folders)")


def describe_data(cfg: DataConfig) -> DataShape:
    """The shape and class counts load_dataset(cfg) will give, without decoding the images.

    Checks what check_data checks, then that data.root holds the files the loader needs
    (listings, file headers, label files) and that data.min_images_per_class keeps 2 classes;
    class_counts are those of the kept classes. ConfigError on the first problem.
    """
    check_data(cfg)
    shape = DESCRIBERS[cfg.name](cfg).resized(cfg.image_size)
    counts = kept_counts(shape.class_counts, cfg.min_images_per_class)
    return DataShape(shape.channels, shape.height, shape.width, tuple(counts))
