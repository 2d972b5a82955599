"""Stanford Online Products from Ebay_train.txt and Ebay_test.txt; the super-class is the parent."""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from runner.config import ConfigError, DataConfig
from runner.data.image_files import ImageFiles, as_int, contiguous, read_rows, set_dir
from runner.data.paths import DOCS

SOP_LAYOUT = ("Stanford_Online_Products/ as unpacked from Stanford_Online_Products.zip: Ebay_train.txt and "
              "Ebay_test.txt (a header line, then <image_id> <class_id> <super_class_id> <path>), "
              "<super_class>_final/<path>")
COLUMNS = "image_id class_id super_class_id path"


def _super_class_name(path: str, super_id: int) -> str:
    """bicycle_final/111085122871_0.JPG -> bicycle (the folder names the super-class)."""
    parts = PurePosixPath(path).parts
    return parts[0].removesuffix("_final") if len(parts) > 1 else str(super_id)


def sop_files(cfg: DataConfig) -> ImageFiles:
    """Ebay_train.txt then Ebay_test.txt (index = position in that concatenation); class = product."""
    root = set_dir(cfg, SOP_LAYOUT, "Ebay_train.txt", "Stanford_Online_Products")
    rows, partition = [], []
    for part in ("train", "test"):
        path = root / f"Ebay_{part}.txt"
        listed = read_rows(path, COLUMNS, SOP_LAYOUT, skip=1)
        rows += [(as_int(c, path, "class_id"), as_int(s, path, "super_class_id"), p) for _, c, s, p in listed]
        partition += [part] * len(listed)
    if not rows:
        raise ConfigError("data.root", str(root), f"{SOP_LAYOUT}; both files are empty ({DOCS})")
    labels, keys = contiguous([c for c, _, _ in rows])
    parents = [""] * len(keys)
    for label, (class_id, super_id, path) in zip(labels.tolist(), rows):
        name = _super_class_name(path, super_id)
        if parents[label] not in ("", name):
            raise ConfigError("data.root", str(root), f"one super-class per product (class_id {class_id} is in "
                              f"{parents[label]} and {name}) ({DOCS})")
        parents[label] = name
    return ImageFiles(root, [p for _, _, p in rows], labels, [str(k) for k in keys], np.arange(len(rows)),
                      SOP_LAYOUT, partition=np.asarray(partition), parents=parents,
                      meta={"family": "products", "official": "Ebay_train.txt train, Ebay_test.txt test"})
