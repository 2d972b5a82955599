"""Cars196 (Stanford Cars) from cars_annos.mat and car_ims/, as distributed for metric learning."""

from __future__ import annotations

import numpy as np
import scipy.io
import scipy.io.matlab

from runner.config import ConfigError, DataConfig
from runner.data.image_files import ImageFiles, contiguous, require
from runner.data.paths import DOCS, one_line, root_dir

TRAIN_CLASSES = 98
"""Classes 1..98 train, 99..196 test: the split of the deep-metric-learning literature."""

CARS_LAYOUT = ("cars_annos.mat (struct array annotations with fields relative_im_path, class, test; "
               "optional class_names) next to car_ims/ (car_ims.tgz unpacked)")
FIELDS = ("relative_im_path", "class", "test")


def _scalar(value) -> object:
    """One MATLAB cell or 1×1 array as a Python value."""
    return np.ravel(value)[0].item() if np.ravel(value).size else None


def read_annotations(path) -> tuple[list[str], list[int], list[str] | None]:
    """(relative paths, 1-based class ids, class names or None) from cars_annos.mat."""
    try:
        mat = scipy.io.loadmat(str(path))
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, NotImplementedError, OSError) as err:  # not v4-v7.2
        raise ConfigError("data.root", str(path), f"a MATLAB file readable by scipy.io.loadmat ({one_line(err)}); "
                          f"{CARS_LAYOUT} ({DOCS})") from None
    ann = mat.get("annotations")
    fields = (ann.dtype.names or ()) if isinstance(ann, np.ndarray) else ()
    missing = [f for f in FIELDS if f not in fields]
    if missing or not ann.size:
        lacks = ", ".join(missing) or "entries"
        raise ConfigError("data.root", str(path), f"{CARS_LAYOUT}; annotations lacks {lacks} ({DOCS})")
    ann = ann.ravel()
    paths = [str(_scalar(a)) for a in ann["relative_im_path"]]
    classes = [int(_scalar(c)) for c in ann["class"]]
    names = [str(_scalar(n)) for n in mat["class_names"].ravel()] if "class_names" in mat else None
    return paths, classes, names


def cars_files(cfg: DataConfig) -> ImageFiles:
    """Every annotated image, in the order of cars_annos.mat (index = image number - 1)."""
    root = root_dir(cfg, CARS_LAYOUT)
    paths, classes, names = read_annotations(require(root / "cars_annos.mat", CARS_LAYOUT))
    require(root / "car_ims", CARS_LAYOUT)
    if names is not None and max(classes) > len(names):
        raise ConfigError("data.root", str(root / "cars_annos.mat"), f"class ids within the {len(names)} class_names "
                          f"(got {max(classes)}) ({DOCS})")
    labels, keys = contiguous(classes)
    class_names = [names[c - 1] if names else str(c) for c in keys]
    partition = np.where(np.asarray(classes) <= TRAIN_CLASSES, "train", "test")
    # the `test` field is the classification benchmark's split (a half of every class), not this one
    return ImageFiles(root, paths, labels, class_names, np.arange(len(paths)), CARS_LAYOUT, partition=partition,
                      meta={"family": "cars", "official": f"classes 1-{TRAIN_CLASSES} train, "
                                                          f"{TRAIN_CLASSES + 1}-196 test"})
