"""`python -m runner.data pack SRC OUT.h5 [--name ...]`: any loader's data set as one HDF5 file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from runner.config import ConfigError, DataConfig
from runner.data.image_set import ImageSet
from runner.data.packed import write_pack
from runner.data.registry import dataset_names, load_dataset

NO_ROOT = ("signs", "digits")
"""Generated or embedded data sets: SRC is ignored (write -)."""


def pack(name: str, src: str, out: Path, image_size: Optional[int] = None, min_images_per_class: int = 1,
         compression: str = "none", group_by: Optional[str] = None, progress: bool = False) -> tuple[ImageSet, Path]:
    """Load `src` with loader `name` (as training would) and write it to `out`.

    The set's own split, file names and groups (with group_by) go along, so a run on the file
    can use data.split: official and data.group_by as on the source.
    """
    root = None if name in NO_ROOT else str(Path(src).expanduser().resolve())
    cfg = DataConfig(name=name, root=root, image_size=image_size, min_images_per_class=min_images_per_class,
                     group_by=group_by)
    ds = load_dataset(cfg, progress=progress)
    source = {"name": name, "root": root, "image_size": image_size, "group_by": group_by}
    return ds, write_pack(ds, out, source, compression)


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m runner.data pack SRC OUT.h5 [--name ...]`; exit 2 on a ConfigError."""
    parser = argparse.ArgumentParser(prog="python -m runner.data", description="Data set tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a data set into one HDF5 file (read with data.name: h5)")
    p.add_argument("src", help="the data set's root (data.root); - for signs and digits")
    p.add_argument("out", type=Path, help="the .h5 file to write")
    p.add_argument("--name", default="folder", choices=dataset_names(), help="the loader (data.name)")
    p.add_argument("--image-size", type=int, default=None, help="resize to N×N (default: the loader's)")
    p.add_argument("--min-images-per-class", type=int, default=1, help="drop rarer classes (default: keep all)")
    p.add_argument("--compression", choices=["none", "gzip", "lzf"], default="none",
                   help="none reads fastest; gzip (any HDF5 tool) or lzf (h5py) shrink files of clean images")
    p.add_argument("--group-by", default=None, help="also store groups: a regex with one capture group over "
                   "the file names (data.group_by)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr while decoding")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        ds, out = pack(args.name, args.src, args.out, args.image_size, args.min_images_per_class, args.compression,
                       args.group_by, progress=not args.no_progress)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    own = ""
    if ds.partition is not None:
        parts, counts = np.unique(ds.partition, return_counts=True)
        own = " (own split: " + ", ".join(f"{p or 'none'} {n}" for p, n in zip(parts.tolist(), counts.tolist())) + ")"
    print(f"packed {len(ds)} images of {len(ds.class_names)} classes{own}, {tuple(ds.images.shape[1:])}, "
          f"into {out} ({out.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
