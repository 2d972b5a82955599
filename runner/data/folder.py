"""One sub-folder of images per class (Tsinghua crops, any ImageFolder layout), or such folders
under train/, query/ and gallery/: the set's own split, retrieved as query/gallery (split: official)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from runner.config import ConfigError, DataConfig
from runner.data.image_files import ImageFiles, decode_files
from runner.data.image_set import DataShape, ImageSet
from runner.data.paths import DEFAULT_SIZE, DOCS, IMAGE_SUFFIXES, one_line, root_dir

FOLDER_LAYOUT = "a directory with one sub-folder of images per class"
PARTS = ("train", "query", "gallery")
SPLIT_LAYOUT = "a directory with train/, query/ and gallery/, each holding one sub-folder of images per class"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


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


def _split_folder_files(root: Path) -> ImageFiles:
    """train/, query/ and gallery/ class folders: one class list (the union of their names, sorted),
    the part each file came from as the set's own split. A class may be in the gallery only
    (distractors) or in query and gallery only (unseen in training)."""
    listed = {part: list_folder(root / part) if (root / part).is_dir() else ([], [], []) for part in PARTS}
    empty = [f"{part}/" for part in PARTS if not listed[part][1]]
    if empty:
        raise ConfigError("data.root", str(root), f"{SPLIT_LAYOUT}; {' and '.join(empty)} holds no images ({DOCS})")
    class_names = sorted(set().union(*(names for names, _, _ in listed.values())))
    ids = {name: i for i, name in enumerate(class_names)}
    paths, labels, partition = [], [], []
    for part, (names, files, part_labels) in listed.items():
        paths += [p.relative_to(root).as_posix() for p in files]
        labels += [ids[names[label]] for label in part_labels]
        partition += [part] * len(files)
    return ImageFiles(root, paths, np.asarray(labels, dtype=np.int64), class_names, np.arange(len(paths)),
                      SPLIT_LAYOUT, partition=np.asarray(partition),
                      meta={"family": "folder", "official": "train/ vs query/ and gallery/ sub-folders"})


def folder_files(cfg: DataConfig) -> ImageFiles:
    """The class folders' image files (classes by name, then files by name); with query/ and
    gallery/ sub-folders, those of train/, query/ and gallery/ in that order."""
    root = root_dir(cfg, FOLDER_LAYOUT)
    if (root / "query").is_dir() and (root / "gallery").is_dir():
        return _split_folder_files(root)
    class_names, files, labels = list_folder(root)
    if not files:
        raise ConfigError("data.root", str(root), f"sub-folders holding {'/'.join(sorted(IMAGE_SUFFIXES))} "
                          f"images ({DOCS})")
    return ImageFiles(root, [p.relative_to(root).as_posix() for p in files], np.asarray(labels, dtype=np.int64),
                      class_names, np.arange(len(files)), FOLDER_LAYOUT, meta={"family": "folder"})


def load_folder(cfg: DataConfig, progress: bool = False) -> ImageSet:
    """One sub-folder per class; images resized to image_size (default 64), RGB unless all grey."""
    return decode_files(folder_files(cfg), cfg.image_size or DEFAULT_SIZE, progress)


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
    files = folder_files(cfg)
    counts = np.bincount(files.labels, minlength=len(files.class_names))
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grey = all(_image_mode(files.root / files.paths[i]) in GREY_MODES for i in firsts)
    size = cfg.image_size or DEFAULT_SIZE
    return DataShape(1 if grey else 3, size, size, tuple(counts.tolist()))
