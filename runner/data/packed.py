"""Packed data sets: any loader's ImageSet as one HDF5 file, and back.

Thousands of small image files are slow on a cluster's shared file system; one
packed file is read whole into memory in a second. `python -m runner.data pack
SRC OUT.h5 --name folder` writes it, `data: {name: h5, root: OUT.h5}` reads it.

Layout: datasets `images` (uint8 N×C×H×W), `labels` (int64 N), `index` (int64 N,
ids in the source), `class_names` (str), optional `parents` (str, one per class),
optional per-image str `partition` (the set's own split), `files` and `groups`;
attrs `format`, `source` (JSON: name, root, image_size, group_by of the packed loader) and
`meta` (JSON: the source ImageSet's meta, e.g. its family).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch

from runner.config import ConfigError
from runner.data.image_set import DataShape, ImageSet

FORMAT = "runner.pack/1"
REQUIRED = ("images", "labels", "index", "class_names")
PER_IMAGE = ("partition", "files", "groups")
"""Optional per-image string arrays of an ImageSet, stored when present."""


def write_pack(ds: ImageSet, path: Path, source: dict, compression: str = "none") -> Path:
    """Write an ImageSet to `path` via a temporary file renamed into place (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    images = ds.images.numpy()
    chunks = (min(256, len(images)),) + images.shape[1:]
    options = {"none": {}, "lzf": {"compression": "lzf", "chunks": chunks},
               "gzip": {"compression": "gzip", "compression_opts": 4, "chunks": chunks}}[compression]
    strings = h5py.string_dtype()
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=images, **options)
            f.create_dataset("labels", data=ds.labels.numpy().astype(np.int64))
            f.create_dataset("index", data=ds.index.numpy().astype(np.int64))
            f.create_dataset("class_names", data=list(ds.class_names), dtype=strings)
            if ds.parents is not None:
                f.create_dataset("parents", data=list(ds.parents), dtype=strings)
            for key in PER_IMAGE:
                if getattr(ds, key) is not None:
                    f.create_dataset(key, data=getattr(ds, key).tolist(), dtype=strings)
            f.attrs["format"] = FORMAT
            f.attrs["source"] = json.dumps(source, sort_keys=True)
            f.attrs["meta"] = json.dumps(ds.meta, sort_keys=True, default=str)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


EXPECTED = "an .h5 file written by `python -m runner.data pack` (see docs/datasets.md)"


def _open_pack(root: Optional[str]) -> tuple[Path, h5py.File]:
    """The packed file, open, with the datasets every pack has; ConfigError otherwise."""
    if root is None or not Path(root).expanduser().is_file():
        raise ConfigError("data.root", root, EXPECTED)
    path = Path(root).expanduser()
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ConfigError("data.root", str(path), f"{EXPECTED}; this is not an HDF5 file") from None
    missing = [k for k in REQUIRED if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        f.close()
        raise ConfigError("data.root", str(path), f"{EXPECTED}; missing {', '.join(missing)}")
    return path, f


def describe_pack(root: Optional[str]) -> DataShape:
    """Shape from the images dataset's header, class counts from the labels (images stay unread)."""
    path, f = _open_pack(root)
    with f:
        shape, dtype, n_classes = f["images"].shape, f["images"].dtype, len(f["class_names"])
        labels = f["labels"][()].astype(np.int64)
    if dtype != np.uint8 or len(shape) != 4 or shape[0] != len(labels) or not n_classes \
            or (len(labels) and not 0 <= labels.min() <= labels.max() < n_classes):
        raise ConfigError("data.root", str(path), f"{EXPECTED}; images uint8 N×C×H×W with N labels "
                          f"in 0..{n_classes - 1}")
    return DataShape(shape[1], shape[2], shape[3], tuple(np.bincount(labels, minlength=n_classes).tolist()))


def read_pack(root: Optional[str], with_images: bool = True) -> ImageSet:
    """Read a packed file whole into memory as an ImageSet (meta keeps the source's family).

    with_images=False leaves the images on disk: `images` is then an empty uint8 tensor of
    shape (N, C, H, W) with stride 0 (no memory), for stream mode to replace.
    """
    path, f = _open_pack(root)
    with f:
        stored = f["images"]
        if with_images:
            images = torch.from_numpy(stored[()])
        else:
            ok = stored.dtype == np.uint8 and stored.ndim == 4
            images = torch.zeros((), dtype=torch.uint8 if ok else torch.float32).expand(*stored.shape)
        labels = torch.from_numpy(f["labels"][()].astype(np.int64))
        index = torch.from_numpy(f["index"][()].astype(np.int64))
        class_names = list(f["class_names"].asstr()[()])
        parents = list(f["parents"].asstr()[()]) if "parents" in f else None
        per_image = {k: np.asarray(f[k].asstr()[()], dtype=str) for k in PER_IMAGE if k in f}
        meta = json.loads(f.attrs.get("meta", "{}"))
        source = json.loads(f.attrs.get("source", "{}"))
    if images.dtype != torch.uint8 or images.ndim != 4 or not len(images) == len(labels) == len(index) or \
            any(len(a) != len(labels) for a in per_image.values()):
        raise ConfigError("data.root", str(path), f"{EXPECTED}; images uint8 N×C×H×W with N labels and ids "
                          f"(and N of {', '.join(per_image) or 'each per-image array'})")
    meta.update(root=str(path), source_name=source.get("name"), source_root=source.get("root"))
    return ImageSet(images, labels, class_names, index, parents=parents, meta=meta, **per_image)
