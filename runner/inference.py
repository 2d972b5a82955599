"""A finished run's model applied to new images: the same preprocessing, the same embedding space.

`load_run_model(RUN_DIR)` rebuilds the network from run.h5's config and loads model.pt
(weights_only=True); the per-channel statistics it standardises with are buffers of
the model, so they travel with it. `read_images` decodes files as the folder loader
does (square resize to the run's image size, grey or RGB), and `embed` returns
float32 embeddings that sit among the run's stored ones (analysis.retrieve --image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from runner import store
from runner.config import ConfigError, RunConfig, from_dict
from runner.data import IMAGE_SUFFIXES, decode_image
from runner.training.models import EmbeddingNet, build_model


@dataclass
class RunModel:
    """A run's trained network in eval mode, with the image shape it expects."""
    run_id: str
    cfg: RunConfig
    model: EmbeddingNet
    image_shape: tuple
    """C×H×W of the training images."""


def load_run_model(run_dir: str | Path) -> RunModel:
    """The network of a completed run; one-line ConfigErrors for what is missing."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.suffix == ".h5" else run_dir / "run.h5"
    if store.run_status(path) != "completed":
        raise ConfigError("run", str(run_dir), "the folder of a completed run (runs/<run_id>/ with its run.h5)")
    weights = path.parent / "model.pt"
    if not weights.is_file():
        raise ConfigError("run", str(run_dir), f"a run folder holding model.pt (it has none: {weights})")
    attrs, info = store.read_attrs(path), store.read_data_info(path)
    cfg = from_dict(attrs["config"])
    shape = tuple(int(s) for s in info["image_shape"])
    channels = torch.zeros(shape[0])
    model = build_model(cfg.model, cfg.embedding, shape[0], shape[-1], channels, channels + 1)
    payload = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    return RunModel(attrs["run_id"], cfg, model.eval(), shape)


def image_files(path: str | Path) -> list[Path]:
    """One image file, or every image under a folder (sorted, recursive)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if path.is_dir() else []
    if not files:
        raise ConfigError("images", str(path), f"an image file or a folder of {'/'.join(sorted(IMAGE_SUFFIXES))} files")
    return files


def read_images(files: list[Path], shape: tuple) -> torch.Tensor:
    """uint8 N×C×H×W as the run's loader made them: grey images for a grey model, colour for colour."""
    channels, size = shape[0], shape[-1]
    out = []
    for f in files:
        try:
            a = decode_image(f, size)
        except ConfigError as err:
            raise ConfigError("image", str(f), err.expected) from None
        if a.ndim == 2 and channels == 3:
            raise ConfigError("image", str(f), "a colour image: the run was trained on RGB images and this one is grey")
        if a.ndim == 3 and channels == 1:
            a = (a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


@torch.inference_mode()
def embed(rm: RunModel, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """float32 embeddings of uint8 N×C×H×W images, in the run's embedding space."""
    parts = [rm.model(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, rm.cfg.embedding.dim), np.float32)


def write_embeddings(out: str | Path, rm: RunModel, files: list[Path], emb: np.ndarray) -> Path:
    """emb.h5: `embeddings` (N×d float32), `files` (their paths), attrs run_id and config."""
    with store.atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("embeddings", data=emb.astype(np.float32))
        f.create_dataset("files", data=[str(p) for p in files], dtype=h5py.string_dtype())
        f.attrs["run_id"] = rm.run_id
        f.attrs["image_shape"] = list(rm.image_shape)
    return Path(out)
