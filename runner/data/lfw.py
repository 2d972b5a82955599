"""Labeled Faces in the Wild from a local scikit-learn cache; never downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from runner.config import ConfigError, DataConfig
from runner.data.image_set import DataShape, ImageSet
from runner.data.paths import DEFAULT_SIZE, DOCS, one_line, root_dir


LFW_PAIR_FILES = ("pairsDevTrain.txt", "pairsDevTest.txt", "pairs.txt")
LFW_PEOPLE_FILES = ("peopleDevTrain.txt", "peopleDevTest.txt")
"""View 1's identity split (4,038 + 1,711 people); not in scikit-learn's cache, optional next to it."""

LFW_SLICE = (slice(70, 195), slice(63, 188))
"""A square 125×125 crop around the face, centred like scikit-learn's default (70:195, 78:172)."""


def _lfw_home(cfg: DataConfig) -> tuple[Path, Path]:
    """(data_home, faces folder) after checking what fetch_lfw_people needs, so that it never downloads,
    never unpacks a tarball into shared storage, and never creates folders under a wrong root."""
    expected = ("a directory holding lfw_home/lfw_funneled/<Person_Name>/<Person_Name>_0001.jpg "
                f"and lfw_home/{', lfw_home/'.join(LFW_PAIR_FILES)}")
    root = root_dir(cfg, expected)
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


def _names_in(path: Path) -> set[str]:
    """People named in a View 1 file: peopleDev*.txt (<name> <count>) or pairsDev*.txt (<name> <i> <j> or
    <name> <i> <name> <j>); the first line is a count."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        fields = line.split()
        names.update(f for f in fields if not f.isdigit())
    return names


def lfw_official(home: Path, class_names: list[str]) -> tuple[np.ndarray | None, str]:
    """View 1's split of each class ('train', 'test' or '' for neither) and how it was found, or None and why.

    peopleDevTrain/Test.txt list every person; without them, the people named in pairsDevTrain/Test.txt
    (a subset: people in no pair are in neither part).
    """
    files = LFW_PEOPLE_FILES if all((home / f).is_file() for f in LFW_PEOPLE_FILES) else LFW_PAIR_FILES[:2]
    train, test = (_names_in(home / f) for f in files)
    both = sorted(train & test)
    if both:
        return None, f"unavailable: {files[0]} and {files[1]} share people ({', '.join(both[:3])})"
    folder = [n.replace(" ", "_") for n in class_names]  # scikit-learn turned the folders' '_' into ' '
    parts = np.asarray(["train" if n in train else "test" if n in test else "" for n in folder])
    return parts, f"View 1 people of {files[0]} train, of {files[1]} test"


def describe_lfw(cfg: DataConfig) -> DataShape:
    """Colour faces of image_size (default 64); a person's images counted from their folder."""
    _, faces = _lfw_home(cfg)
    counts = [len(os.listdir(faces / p)) for p in sorted(os.listdir(faces)) if (faces / p).is_dir()]
    size = cfg.image_size or DEFAULT_SIZE
    return DataShape(3, size, size, tuple(counts))


def load_lfw(cfg: DataConfig) -> ImageSet:
    """Labeled Faces in the Wild from a local scikit-learn cache (colour, square face crop)."""
    root, faces = _lfw_home(cfg)
    size = cfg.image_size or DEFAULT_SIZE
    side = LFW_SLICE[0].stop - LFW_SLICE[0].start
    try:
        from sklearn.datasets import fetch_lfw_people  # lazily: scikit-learn's import is ~2 s
        bunch = fetch_lfw_people(data_home=str(root), funneled=faces.name == "lfw_funneled",
                                 resize=(size + 0.5) / side,  # sklearn truncates side·resize to an int
                                 min_faces_per_person=cfg.min_images_per_class, color=True,
                                 slice_=LFW_SLICE, download_if_missing=False)
    except ValueError as err:  # no person has enough faces
        raise ConfigError("data.min_images_per_class", cfg.min_images_per_class,
                          f"a value some people reach ({one_line(err)})") from None
    except OSError as err:  # an unreadable face, or no right to write sklearn's joblib cache
        raise ConfigError("data.root", str(root), "readable faces in a writable directory (scikit-learn caches "
                          f"decoded faces in lfw_home/joblib; or pack once, {DOCS}): {one_line(err)}") from None
    images = torch.from_numpy((bunch.images * 255.0).round().astype(np.uint8)).permute(0, 3, 1, 2)
    index = _lfw_file_index(faces, cfg.min_images_per_class, bunch.target_names[bunch.target])
    class_names = [str(n) for n in bunch.target_names]
    per_class, official = lfw_official(faces.parent, class_names)
    meta = {"family": "faces", "root": str(root), "faces": faces.name,
            "index": "sorted file list" if index is not None else "sklearn order", "official": official}
    return ImageSet(images.contiguous(), torch.from_numpy(bunch.target.astype(np.int64)), class_names,
                    torch.from_numpy(index) if index is not None else torch.arange(len(images)), meta=meta,
                    partition=None if per_class is None else per_class[bunch.target])
