"""What the file loaders share: the root check, its message, and default sizes."""

from __future__ import annotations

from pathlib import Path

from runner.config import ConfigError, DataConfig


DOCS = "see docs/datasets.md"

DEFAULT_SIZE = 64
"""Side of the square images of folder and lfw when data.image_size is null."""

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def root_dir(cfg: DataConfig, expected: str) -> Path:
    """cfg.root as an existing directory, or a ConfigError describing what belongs there."""
    if cfg.root is None or not Path(cfg.root).expanduser().is_dir():
        raise ConfigError("data.root", cfg.root, f"{expected} ({DOCS})")
    return Path(cfg.root).expanduser()


def one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"
