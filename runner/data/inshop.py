"""DeepFashion In-Shop Clothes Retrieval from list_eval_partition.txt: train, query and gallery."""

from __future__ import annotations

import numpy as np

from runner.config import ConfigError, DataConfig
from runner.data.image_files import ImageFiles, as_int, contiguous, read_rows, require
from runner.data.paths import DOCS, root_dir

INSHOP_LAYOUT = ("the In-shop Clothes Retrieval Benchmark folder: list_eval_partition.txt (or "
                 "Eval/list_eval_partition.txt: a count line, a header line, then <image_name> <item_id> "
                 "<evaluation_status> with status train, query or gallery) and img/ (Img/img.zip unpacked, "
                 "here or in Img/)")
STATUSES = ("train", "query", "gallery")


def inshop_files(cfg: DataConfig) -> ImageFiles:
    """Every listed image in the file's order; class = item id; the status is the set's own split."""
    root = root_dir(cfg, INSHOP_LAYOUT)
    path = root / "list_eval_partition.txt"
    if not path.is_file() and (root / "Eval" / path.name).is_file():
        path = root / "Eval" / path.name
    rows = read_rows(path, "image_name item_id evaluation_status", INSHOP_LAYOUT, skip=2)
    with open(path, encoding="utf-8") as f:
        count = as_int(f.readline().strip(), path, "image count on the first line")
    if count != len(rows):
        raise ConfigError("data.root", str(path), f"{count} images as its first line says, got {len(rows)} "
                          f"(truncated?) ({DOCS})")
    bad = next((r for r in rows if r[2] not in STATUSES), None)
    if bad is not None:
        raise ConfigError("data.root", str(path), f"evaluation_status train, query or gallery, got {bad[2]!r} "
                          f"({DOCS})")
    # the archive unpacks to img/; some copies keep the distribution's Img/ folder around it
    prefix = "Img/" if not (root / "img").is_dir() and (root / "Img" / "img").is_dir() else ""
    require(root / f"{prefix}img", INSHOP_LAYOUT)
    labels, keys = contiguous([item for _, item, _ in rows])
    return ImageFiles(root, [prefix + name for name, _, _ in rows], labels, [str(k) for k in keys],
                      np.arange(len(rows)), INSHOP_LAYOUT, partition=np.asarray([s for _, _, s in rows]),
                      meta={"family": "clothes", "official": "train vs query/gallery of list_eval_partition.txt"})
