"""Data sets that are lists of image files: the list (`ImageFiles`), reading list files, decoding.

A file loader (folder, cub, cars, sop, inshop) only reads its set's list files into an
`ImageFiles`: paths, labels, class names and the set's own split, no pixels. `decode_files`
turns that into an `ImageSet` at one square size, in a thread pool, into one preallocated
array (so peak memory is the decoded set, not two or three copies of it).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from runner.config import ConfigError, DataConfig
from runner.data.image_set import ImageSet
from runner.data.paths import DOCS, one_line, root_dir

CHUNK = 256
"""Files per decoding task: small next to decoding cost, large enough for a smooth progress bar."""


@dataclass
class ImageFiles:
    root: Path
    """Directory the paths are relative to (the set's own folder)."""
    paths: list[str]
    """One path per image, relative to root, in the set's own order."""
    labels: np.ndarray
    """int64, contiguous class ids 0..C-1."""
    class_names: list[str]
    index: np.ndarray
    """int64: position of each image in the set's own lists (its 1-based id - 1 where it has ids)."""
    layout: str
    """The expected layout, for error messages."""
    partition: Optional[np.ndarray] = None
    """The set's own split per image (train, test, query, gallery), or None."""
    parents: Optional[list[str]] = None
    meta: dict = field(default_factory=dict)


def set_dir(cfg: DataConfig, layout: str, marker: str, subfolder: str) -> Path:
    """data.root, or its `subfolder` (the folder the set's archive unpacks to) when `marker` is only there."""
    root = root_dir(cfg, layout)
    if not (root / marker).exists() and (root / subfolder / marker).exists():
        return root / subfolder
    return root


def require(path: Path, layout: str) -> Path:
    """path, or a one-line ConfigError naming the missing file and the layout expected around it."""
    if not path.exists():
        raise ConfigError("data.root", str(path.parent), f"{layout}; missing {path.name} ({DOCS})")
    return path


def read_rows(path: Path, columns: str, layout: str, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of len(columns.split()) fields, after `skip` header lines."""
    n = len(columns.split())
    rows = []
    with open(require(path, layout), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if number <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) != n:
                raise ConfigError("data.root", str(path), f"lines of <{'> <'.join(columns.split())}> "
                                  f"(line {number}: {line.strip()[:80]!r}) ({DOCS})")
            rows.append(fields)
    return rows


def as_int(value: str, path: Path, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError("data.root", str(path), f"an integer {what}, got {value!r} ({DOCS})") from None


def contiguous(ids: list) -> tuple[np.ndarray, list]:
    """Labels 0..C-1 in the sorted order of the set's own class ids, and those ids."""
    keys, labels = np.unique(np.asarray(ids), return_inverse=True)
    return labels.astype(np.int64).reshape(-1), keys.tolist()


def decode_image(path: Path, size: int, layout: str = "") -> np.ndarray:
    """A file as a size×size uint8 array: H×W for grey images, H×W×3 otherwise."""
    try:
        with Image.open(path) as img:
            img.draft(img.mode, (size, size))  # JPEG: decode at 1/2..1/8 scale when still >= size
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            img = img.convert("L" if grey else "RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's ways of saying "not a valid image"
        where = f"; {layout}" if layout else ""
        raise ConfigError("data.root", str(path), f"a readable image file ({one_line(err)}){where}") from None


def n_workers() -> int:
    # the CPUs this process may use (a SLURM allocation), not the node's core count
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus))


def decode_paths(paths: list[Path], size: int, layout: str = "", progress: bool = False,
                 desc: str = "decoding") -> torch.Tensor:
    """uint8 N×C×H×W from image files: 1 channel if every image is grey, else 3 (grey ones repeated)."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    grey = np.zeros(len(paths), dtype=bool)

    def decode_chunk(start: int) -> int:
        # each task writes its own rows of `out`: no two threads touch the same memory
        for i in range(start, min(start + CHUNK, len(paths))):
            a = decode_image(paths[i], size, layout)
            grey[i] = a.ndim == 2
            out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return min(CHUNK, len(paths) - start)

    # PIL releases the GIL while decoding and resizing, so threads overlap the work
    starts = range(0, len(paths), CHUNK)
    with tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr, disable=not progress) as bar, \
            ThreadPoolExecutor(max(1, min(n_workers(), len(starts)))) as pool:
        futures = [pool.submit(decode_chunk, s) for s in starts]
        try:
            for done in as_completed(futures):
                bar.update(done.result())  # re-raises a worker's ConfigError here
        except BaseException:
            for f in futures:  # a broken file stops the load now, not after decoding the rest
                f.cancel()
            raise
    if len(paths) and grey.all():
        return torch.from_numpy(np.ascontiguousarray(out[:, :1]))
    return torch.from_numpy(out)


def decode_files(files: ImageFiles, size: int, progress: bool = False) -> ImageSet:
    """Decode every file of the list to size×size; the list's facts go along as ImageSet fields."""
    name = files.meta.get("family", "images")
    images = decode_paths([files.root / p for p in files.paths], size, files.layout, progress,
                          desc=f"decoding {name}")
    return ImageSet(images, torch.from_numpy(files.labels.astype(np.int64)), list(files.class_names),
                    torch.from_numpy(files.index.astype(np.int64)), parents=files.parents,
                    meta={**files.meta, "root": str(files.root)}, partition=files.partition,
                    files=np.asarray(files.paths, dtype=str))
