"""File-format loaders: MNIST idx, class folders, LFW, synthetic signs, packed HDF5.

`LOADERS` maps `data.name` to a function DataConfig -> ImageSet; runner.data picks it
up. Every loader reads only local files (compute nodes have no internet): a missing
root or file is a one-line ConfigError on `data.root` that points to docs/datasets.md,
where each expected layout is drawn.
"""

from __future__ import annotations

import gzip
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from runner.config import ConfigError, DataConfig
from runner.data import ImageSet
from runner.pack import read_pack
from runner.signs import generate_signs

DOCS = "see docs/datasets.md"
DEFAULT_SIZE = 64
"""Side of the square images of folder and lfw when data.image_size is null."""
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _root(cfg: DataConfig, expected: str) -> Path:
    """cfg.root as an existing directory, or a ConfigError describing what belongs there."""
    if cfg.root is None or not Path(cfg.root).expanduser().is_dir():
        raise ConfigError("data.root", cfg.root, f"{expected} ({DOCS})")
    return Path(cfg.root).expanduser()


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


# ---------------------------------------------------------------- MNIST idx files

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
    root = _root(cfg, expected)
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
    return ImageSet(torch.from_numpy(np.concatenate(images))[:, None], torch.from_numpy(labels),
                    list(class_names), torch.arange(len(labels)),
                    meta={"family": "mnist", "root": str(root), "splits": "+".join(splits)})


def load_mnist(cfg: DataConfig) -> ImageSet:
    """MNIST (28×28 grey) from idx files; the train and/or t10k pair, whichever is present."""
    return _load_idx_set(cfg, "MNIST", [str(c) for c in range(10)])


def load_fashion_mnist(cfg: DataConfig) -> ImageSet:
    """Fashion-MNIST: the same idx format and file names as MNIST."""
    return _load_idx_set(cfg, "FashionMNIST", FASHION_CLASSES)


# ---------------------------------------------------------------- class folders

def list_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Class names (sorted sub-folders holding images), image files (sorted) and their labels."""
    class_names, files, labels = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        if images:
            labels += [len(class_names)] * len(images)
            class_names.append(folder.name)
            files += images
    return class_names, files, labels


def decode_image(path: Path, size: int) -> np.ndarray:
    """A file as a size×size uint8 array: H×W for grey images, H×W×3 otherwise."""
    try:
        with Image.open(path) as img:
            img.draft(img.mode, (size, size))  # JPEG: decode at 1/2..1/8 scale when still >= size
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            img = img.convert("L" if grey else "RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's ways of saying "not a valid image"
        raise ConfigError("data.root", str(path), f"a readable image file ({_one_line(err)})") from None


def _n_workers() -> int:
    # the CPUs this process may use (a SLURM allocation), not the node's core count
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus))


def load_folder(cfg: DataConfig) -> ImageSet:
    """One sub-folder per class; images resized to image_size (default 64), RGB unless all grey."""
    root = _root(cfg, "a directory with one sub-folder of images per class")
    class_names, files, labels = list_folder(root)
    if not files:
        raise ConfigError("data.root", str(root), f"sub-folders holding {'/'.join(sorted(IMAGE_SUFFIXES))} "
                          f"images ({DOCS})")
    size = cfg.image_size or DEFAULT_SIZE
    # PIL releases the GIL while decoding and resizing, so threads overlap the work; chunks of
    # 256 files keep the per-task overhead small next to decoding small crops
    chunks = [files[i:i + 256] for i in range(0, len(files), 256)]
    with ThreadPoolExecutor(min(_n_workers(), len(chunks))) as pool:
        arrays = [a for chunk in pool.map(lambda c: [decode_image(p, size) for p in c], chunks) for a in chunk]
    if all(a.ndim == 2 for a in arrays):
        images = np.stack(arrays)[:, None]
    else:
        images = np.stack([a if a.ndim == 3 else np.repeat(a[:, :, None], 3, 2) for a in arrays])
        images = images.transpose(0, 3, 1, 2)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.tensor(labels, dtype=torch.long),
                    class_names, torch.arange(len(files)), meta={"family": "folder", "root": str(root)})


# ---------------------------------------------------------------- LFW through scikit-learn

LFW_PAIR_FILES = ("pairsDevTrain.txt", "pairsDevTest.txt", "pairs.txt")
LFW_SLICE = (slice(70, 195), slice(63, 188))
"""A square 125×125 crop around the face, centred like scikit-learn's default (70:195, 78:172)."""


def _lfw_home(cfg: DataConfig) -> tuple[Path, Path]:
    """(data_home, faces folder) after checking what fetch_lfw_people needs, so that it never downloads,
    never unpacks a tarball into shared storage, and never creates folders under a wrong root."""
    expected = ("a directory holding lfw_home/lfw_funneled/<Person_Name>/<Person_Name>_0001.jpg "
                f"and lfw_home/{', lfw_home/'.join(LFW_PAIR_FILES)}")
    root = _root(cfg, expected)
    home = root / "lfw_home"
    faces = next((home / d for d in ("lfw_funneled", "lfw") if (home / d).is_dir()), None)
    missing = [n for n in LFW_PAIR_FILES if not (home / n).is_file()]
    if faces is None or missing:
        tarball = " (unpack lfw-funneled.tgz there first)" if (home / "lfw-funneled.tgz").exists() else ""
        raise ConfigError("data.root", str(root), f"{expected}{tarball} ({DOCS})")
    return root, faces


def _lfw_file_index(faces: Path, min_faces: int, people: np.ndarray) -> np.ndarray | None:
    """Position of each returned face in the sorted list of all LFW files, or None if unknown.

    fetch_lfw_people lists people and files sorted, keeps people with >= min_faces files and
    shuffles with RandomState(42); replaying that (checked against the returned names) recovers
    which file each face came from.
    """
    folders = sorted(p for p in os.listdir(faces) if (faces / p).is_dir())
    counts = [len(os.listdir(faces / p)) for p in folders]
    starts = np.cumsum([0] + counts[:-1])
    kept = [(s + i, f) for s, c, f in zip(starts, counts, folders) if c >= min_faces for i in range(c)]
    if len(kept) != len(people):
        return None
    order = np.arange(len(kept))
    np.random.RandomState(42).shuffle(order)
    if any(kept[k][1].replace("_", " ") != name for k, name in zip(order, people)):
        return None
    return np.array([kept[k][0] for k in order], dtype=np.int64)


def load_lfw(cfg: DataConfig) -> ImageSet:
    """Labeled Faces in the Wild from a local scikit-learn cache (colour, square face crop)."""
    from sklearn.datasets import fetch_lfw_people
    root, faces = _lfw_home(cfg)
    size = cfg.image_size or DEFAULT_SIZE
    side = LFW_SLICE[0].stop - LFW_SLICE[0].start
    try:
        bunch = fetch_lfw_people(data_home=str(root), funneled=faces.name == "lfw_funneled",
                                 resize=(size + 0.5) / side,  # sklearn truncates side·resize to an int
                                 min_faces_per_person=cfg.min_images_per_class, color=True,
                                 slice_=LFW_SLICE, download_if_missing=False)
    except ValueError as err:  # no person has enough faces
        raise ConfigError("data.min_images_per_class", cfg.min_images_per_class,
                          f"a value some people reach ({_one_line(err)})") from None
    except OSError as err:  # an unreadable face, or no right to write sklearn's joblib cache
        raise ConfigError("data.root", str(root), "readable faces in a writable directory (scikit-learn caches "
                          f"decoded faces in lfw_home/joblib; or pack once, {DOCS}): {_one_line(err)}") from None
    images = torch.from_numpy((bunch.images * 255.0).round().astype(np.uint8)).permute(0, 3, 1, 2)
    index = _lfw_file_index(faces, cfg.min_images_per_class, bunch.target_names[bunch.target])
    meta = {"family": "faces", "root": str(root), "faces": faces.name,
            "index": "sorted file list" if index is not None else "sklearn order"}
    return ImageSet(images.contiguous(), torch.from_numpy(bunch.target.astype(np.int64)),
                    [str(n) for n in bunch.target_names],
                    torch.from_numpy(index) if index is not None else torch.arange(len(images)), meta=meta)


# ---------------------------------------------------------------- synthetic and packed

def load_signs(cfg: DataConfig) -> ImageSet:
    """Synthetic traffic signs (runner.signs); data.root is unused."""
    return generate_signs(cfg.image_size)


def load_h5(cfg: DataConfig) -> ImageSet:
    """A file written by `python -m runner.data pack`, read whole into memory."""
    return read_pack(cfg.root)


LOADERS: dict[str, Callable[[DataConfig], ImageSet]] = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "folder": load_folder,
    "lfw": load_lfw,
    "signs": load_signs,
    "h5": load_h5,
}


# ---------------------------------------------------------------- checks before submission

ROOT_KINDS = {"mnist": "dir", "fashion_mnist": "dir", "folder": "dir", "lfw": "dir", "h5": "file"}
"""Loaders that read data.root, and whether it names a directory or a file."""


def check_data(cfg: DataConfig) -> None:
    """Cheap checks that need no loading (runner.grid.validate_run): the name, and that data.root exists."""
    from runner.data import dataset_names
    names = dataset_names()
    if cfg.name not in names:
        import difflib
        close = difflib.get_close_matches(cfg.name, names, n=1)
        raise ConfigError("data.name", cfg.name, f"one of {', '.join(names)}"
                          + (f" (did you mean {close[0]}?)" if close else ""))
    kind = ROOT_KINDS.get(cfg.name)
    if kind is None:
        return
    root = Path(cfg.root).expanduser() if cfg.root else None
    if root is None or not (root.is_dir() if kind == "dir" else root.is_file()):
        what = "an existing directory" if kind == "dir" else "an existing file"
        raise ConfigError("data.root", cfg.root, f"{what} for data.name {cfg.name} ({DOCS})")
