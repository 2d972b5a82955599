"""MNIST and Fashion-MNIST from their idx files (gzip or plain)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from runner.config import ConfigError, DataConfig
from runner.data.image_set import ImageSet
from runner.data.paths import DOCS, root_dir


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """One idx file (gzip or plain, told apart by its first bytes) as an array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        raise ConfigError("data.root", str(path), "an idx file (magic 2051 for images, 2049 for labels)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
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


def _load_idx_set(cfg: DataConfig, torchvision_dir: str, class_names: list[str]) -> ImageSet:
    expected = ("a directory holding train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] "
                "and/or t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]")
    root = root_dir(cfg, expected)
    dirs = [root, root / torchvision_dir / "raw"]  # also torchvision's own download layout
    images, labels, splits = [], [], []
    for split in ("train", "t10k"):  # train first: index = position in train + t10k
        image_file, label_file = _find_idx(dirs, split, "images-idx3"), _find_idx(dirs, split, "labels-idx1")
        if image_file is None and label_file is None:
            continue
        if image_file is None or label_file is None:
            missing = f"{split}-{'images-idx3' if image_file is None else 'labels-idx1'}-ubyte[.gz]"
            raise ConfigError("data.root", str(root), f"{missing} next to {(image_file or label_file).name} ({DOCS})")
        x, y = read_idx(image_file), read_idx(label_file)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError("data.root", str(root), f"{image_file.name} (N×H×W) and {label_file.name} (N) "
                              f"of equal length, got {x.shape} and {y.shape}")
        images.append(x.astype(np.uint8))
        labels.append(y.astype(np.int64))
        splits.append(split)
    if not images:
        raise ConfigError("data.root", str(root), f"{expected} ({DOCS})")
    labels = np.concatenate(labels)
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ConfigError("data.root", str(root), f"labels in 0..{len(class_names) - 1}")
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
