"""One sub-folder of images per class (Tsinghua crops, any ImageFolder layout)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from runner.config import ConfigError, DataConfig
from runner.data.image_set import DataShape, ImageSet
from runner.data.paths import DEFAULT_SIZE, DOCS, IMAGE_SUFFIXES, one_line, root_dir


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
            grey = img.mode in GREY_MODES
            img = img.convert("L" if grey else "RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's ways of saying "not a valid image"
        raise ConfigError("data.root", str(path), f"a readable image file ({one_line(err)})") from None


def _n_workers() -> int:
    # the CPUs this process may use (a SLURM allocation), not the node's core count
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus))


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _listed(cfg: DataConfig) -> tuple[Path, list[str], list[Path], list[int]]:
    root = root_dir(cfg, "a directory with one sub-folder of images per class")
    class_names, files, labels = list_folder(root)
    if not files:
        raise ConfigError("data.root", str(root), f"sub-folders holding {'/'.join(sorted(IMAGE_SUFFIXES))} "
                          f"images ({DOCS})")
    return root, class_names, files, labels


def _image_mode(path: Path) -> str:
    """The PIL mode of an image file from its header (Image.open decodes nothing yet)."""
    try:
        with Image.open(path) as img:
            return img.mode
    except (OSError, ValueError, SyntaxError) as err:
        raise ConfigError("data.root", str(path), f"a readable image file ({one_line(err)})") from None


def describe_folder(cfg: DataConfig) -> DataShape:
    """Classes and counts from the listing; channels from the header of each class's first image.

    The loader makes a grey set only when every image is grey; a first image per class stands
    in for all of them here, so a set whose grey and colour images share classes may load as RGB.
    """
    _, class_names, files, labels = _listed(cfg)
    counts = np.bincount(labels, minlength=len(class_names))
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grey = all(_image_mode(files[i]) in GREY_MODES for i in firsts)
    size = cfg.image_size or DEFAULT_SIZE
    return DataShape(1 if grey else 3, size, size, tuple(counts.tolist()))


def load_folder(cfg: DataConfig) -> ImageSet:
    """One sub-folder per class; images resized to image_size (default 64), RGB unless all grey."""
    root, class_names, files, labels = _listed(cfg)
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
