"""CUB-200-2011 (Caltech-UCSD Birds) from its archive's own list files."""

from __future__ import annotations

import numpy as np

from runner.config import ConfigError, DataConfig
from runner.data.image_files import ImageFiles, as_int, contiguous, read_rows, require, set_dir
from runner.data.paths import DOCS

TRAIN_CLASSES = 100
"""Classes 1..100 train, 101..200 test: the split of the deep-metric-learning literature."""

CUB_LAYOUT = ("CUB_200_2011/ as unpacked from CUB_200_2011.tgz: images.txt (<image_id> <path>), "
              "image_class_labels.txt (<image_id> <class_id>), classes.txt (<class_id> <name>), "
              "images/<path>")


def cub_files(cfg: DataConfig) -> ImageFiles:
    """Every image listed in images.txt, labelled by image_class_labels.txt, in image-id order."""
    root = set_dir(cfg, CUB_LAYOUT, "images.txt", "CUB_200_2011")
    images = read_rows(root / "images.txt", "image_id path", CUB_LAYOUT)
    labels_file = root / "image_class_labels.txt"
    class_of = {as_int(i, labels_file, "image id"): as_int(c, labels_file, "class id")
                for i, c in read_rows(labels_file, "image_id class_id", CUB_LAYOUT)}
    classes_file = root / "classes.txt"
    names = {as_int(c, classes_file, "class id"): name
             for c, name in read_rows(classes_file, "class_id name", CUB_LAYOUT)}
    require(root / "images", CUB_LAYOUT)
    ids = [as_int(i, root / "images.txt", "image id") for i, _ in images]
    missing = next((i for i in ids if i not in class_of), None)
    if missing is not None:
        raise ConfigError("data.root", str(labels_file), f"a class for every image of images.txt (none for image "
                          f"{missing}) ({DOCS})")
    class_ids = [class_of[i] for i in ids]
    unknown = next((c for c in class_ids if c not in names), None)
    if unknown is not None:
        raise ConfigError("data.root", str(classes_file), f"a name for every class id (none for {unknown}) ({DOCS})")
    labels, keys = contiguous(class_ids)
    partition = np.where(np.asarray(class_ids) <= TRAIN_CLASSES, "train", "test")
    return ImageFiles(root, [f"images/{p}" for _, p in images], labels, [names[c] for c in keys],
                      np.asarray(ids, dtype=np.int64) - 1, CUB_LAYOUT, partition=partition,
                      meta={"family": "birds", "official": f"classes 1-{TRAIN_CLASSES} train, "
                                                           f"{TRAIN_CLASSES + 1}-200 test"})
