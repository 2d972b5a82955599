"""MNIST and Fashion-MNIST from their idx files (gzip or plain)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from runner.config import ConfigError, DataConfig
from runner.data.image_set import DataShape, ImageSet
from runner.data.paths import DOCS, root_dir


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_dims(path: Path, raw: bytes) -> tuple[int, ...]:
    """The dimensions in an idx header (the first 4 + 4·ndim bytes of `raw`)."""
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES or len(raw) < 4 + 4 * raw[3]:
        raise ConfigError("data.root", str(path), "an idx file (magic 2051 for images, 2049 for labels)")
    return struct.unpack(f">{raw[3]}I", raw[4:4 + 4 * raw[3]])


def read_idx_header(path: Path) -> tuple[int, ...]:
    """The dimensions of an idx file from its first bytes, checked against the file's length.

    The length is the file size, or for gzip the uncompressed size its last 4 bytes record
    (mod 2**32), so a truncated file is found without decompressing it.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
        if gz and size >= 6:
            fh.seek(-4, 2)
            size = struct.unpack("<I", fh.read(4))[0]
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(4 + 4 * 4)
    except (OSError, EOFError) as err:  # a damaged gzip stream
        raise ConfigError("data.root", str(path), f"a readable idx file ({type(err).__name__}: {err})") from None
    dims = _idx_dims(path, head)
    expected = 4 + 4 * len(dims) + int(np.prod(dims)) * np.dtype(_IDX_DTYPES[head[2]]).itemsize
    if size != expected % (2**32 if gz else 2**64):
        raise ConfigError("data.root", str(path), f"an idx file of {int(np.prod(dims))} values (truncated?)")
    return dims


def read_idx(path: Path) -> np.ndarray:
    """One idx file (gzip or plain, told apart by its first bytes) as an array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    dims = _idx_dims(path, raw)
    ndim = len(dims)
    data = np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ConfigError("data.root", str(path), f"an idx file of {int(np.prod(dims))} values (truncated?)")
    return data.reshape(dims)


def _find_idx(dirs: list[Path], split: str, kind: str) -> Path | None:
    """train-images-idx3-ubyte[.gz], or the train-images.idx3-ubyte spelling of some mirrors."""
    stems = [f"{split}-{kind}-ubyte", f"{split}-{kind.replace('-', '.')}-ubyte"]
    for d in dirs:
        for stem in stems:
            for name in (stem, stem + ".gz"):
                if (d / name).is_file():
                    return d / name
    return None


_EXPECTED = ("a directory holding train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] "
             "and/or t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]")


def _idx_pairs(cfg: DataConfig, torchvision_dir: str) -> tuple[Path, list[tuple[str, Path, Path]]]:
    """data.root and its (split, images file, labels file) pairs, train first; ConfigError if none."""
    root = root_dir(cfg, _EXPECTED)
    dirs = [root, root / torchvision_dir / "raw"]  # also torchvision's own download layout
    pairs = []
    for split in ("train", "t10k"):  # train first: index = position in train + t10k
        image_file, label_file = _find_idx(dirs, split, "images-idx3"), _find_idx(dirs, split, "labels-idx1")
        if image_file is None and label_file is None:
            continue
        if image_file is None or label_file is None:
            missing = f"{split}-{'images-idx3' if image_file is None else 'labels-idx1'}-ubyte[.gz]"
            raise ConfigError("data.root", str(root), f"{missing} next to {(image_file or label_file).name} ({DOCS})")
        pairs.append((split, image_file, label_file))
    if not pairs:
        raise ConfigError("data.root", str(root), f"{_EXPECTED} ({DOCS})")
    return root, pairs


def _check_labels(root: Path, labels: np.ndarray, n_classes: int) -> None:
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ConfigError("data.root", str(root), f"labels in 0..{n_classes - 1}")


def describe_idx_set(cfg: DataConfig, torchvision_dir: str, n_classes: int) -> DataShape:
    """Shape and class counts from the image headers and the (small) label files."""
    root, pairs = _idx_pairs(cfg, torchvision_dir)
    labels, size = [], None
    for _, image_file, label_file in pairs:
        dims, y = read_idx_header(image_file), read_idx(label_file)
        if len(dims) != 3 or y.ndim != 1 or dims[0] != len(y):
            raise ConfigError("data.root", str(root), f"{image_file.name} (N×H×W) and {label_file.name} (N) "
                              f"of equal length, got {tuple(dims)} and {y.shape}")
        size = size or dims[1:]
        labels.append(y.astype(np.int64))
    y = np.concatenate(labels)
    _check_labels(root, y, n_classes)
    return DataShape(1, size[0], size[1], tuple(np.bincount(y, minlength=n_classes).tolist()))


def _load_idx_set(cfg: DataConfig, torchvision_dir: str, class_names: list[str]) -> ImageSet:
    root, pairs = _idx_pairs(cfg, torchvision_dir)
    images, labels, splits = [], [], []
    for split, image_file, label_file in pairs:
        x, y = read_idx(image_file), read_idx(label_file)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError("data.root", str(root), f"{image_file.name} (N×H×W) and {label_file.name} (N) "
                              f"of equal length, got {x.shape} and {y.shape}")
        images.append(x.astype(np.uint8))
        labels.append(y.astype(np.int64))
        splits.append(split)
    labels = np.concatenate(labels)
    _check_labels(root, labels, len(class_names))
    # the set's own split: the train file's images, then t10k's (whichever are present)
    partition = np.concatenate([np.full(len(x), "train" if s == "train" else "test") for x, s in zip(images, splits)])
    return ImageSet(torch.from_numpy(np.concatenate(images))[:, None], torch.from_numpy(labels),
                    list(class_names), torch.arange(len(labels)),
                    meta={"family": "mnist", "root": str(root), "splits": "+".join(splits),
                          "official": "train-* files train, t10k-* files test"},
                    partition=partition)


def load_mnist(cfg: DataConfig) -> ImageSet:
    """MNIST (28×28 grey) from idx files; the train and/or t10k pair, whichever is present."""
    return _load_idx_set(cfg, "MNIST", [str(c) for c in range(10)])


def load_fashion_mnist(cfg: DataConfig) -> ImageSet:
    """Fashion-MNIST: the same idx format and file names as MNIST."""
    return _load_idx_set(cfg, "FashionMNIST", FASHION_CLASSES)


def describe_mnist(cfg: DataConfig) -> DataShape:
    return describe_idx_set(cfg, "MNIST", 10)


def describe_fashion_mnist(cfg: DataConfig) -> DataShape:
    return describe_idx_set(cfg, "FashionMNIST", len(FASHION_CLASSES))
