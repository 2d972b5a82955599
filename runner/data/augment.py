"""Per-sample augmentation of whole batches on the training device.

One affine warp (rotation, scale, shift) per image through `affine_grid`, plus
optional flips and brightness/contrast jitter. It runs on the batch tensor, so the
GPU path needs no per-sample CPU work, and a seeded generator makes it replayable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from runner.config import DataConfig


@dataclass(frozen=True)
class AugmentPolicy:
    rotate_deg: float = 0.0
    scale: float = 0.0
    """Scale is drawn from [1 - scale, 1 + scale]."""
    shift: float = 0.0
    """Shift as a fraction of the image side."""
    jitter: float = 0.0
    """Brightness and contrast factors drawn from [1 - jitter, 1 + jitter]."""
    hflip: bool = False
    crop_scale: float = 1.0
    """Stream mode only: RandomResizedCrop's smallest area fraction (the memory path warps instead)."""

    @property
    def active(self) -> bool:
        return any((self.rotate_deg, self.scale, self.shift, self.jitter, self.hflip))


LEVELS = {
    "none": AugmentPolicy(),
    "light": AugmentPolicy(rotate_deg=10, scale=0.1, shift=0.1, jitter=0.1, crop_scale=0.5),
    # strong's crops: the 0.16..1 area of the metric-learning recipes (MLRC, powerful-benchmarker)
    "strong": AugmentPolicy(rotate_deg=15, scale=0.15, shift=0.12, jitter=0.3, crop_scale=0.16),
}
# family -> (level, flips). Signs and digits carry arrows and text: never flip them.
# Signs: light, not strong: strong warps underfit a 300-step budget (docs/small-data.md:
# synthetic signs, 10/class, 1-NN none 0.468, light 0.422, strong 0.314; 1 seed).
# Birds, cars, products and clothes are mirror-symmetric: the metric-learning recipes all flip them.
FAMILY_DEFAULTS = {"digits": ("light", False), "mnist": ("light", False), "signs": ("light", False),
                   "faces": ("light", True), "folder": ("light", False), "birds": ("light", True),
                   "cars": ("light", True), "products": ("light", True), "clothes": ("light", True)}


def policy_for(cfg: DataConfig, family: str) -> AugmentPolicy:
    level, flip = FAMILY_DEFAULTS.get(family, ("light", False))
    if cfg.augment != "auto":
        level = cfg.augment
    if cfg.hflip is not None:
        flip = cfg.hflip
    base = LEVELS[level]
    return AugmentPolicy(base.rotate_deg, base.scale, base.shift, base.jitter, flip, base.crop_scale)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device`; on CUDA pinned and non_blocking, so it is no host sync."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment_batch(images: torch.Tensor, policy: AugmentPolicy, gen: torch.Generator) -> torch.Tensor:
    """uint8 or float N×C×H×W → float in [0,1], each image warped with its own parameters."""
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images
    if not policy.active:
        return x
    n = x.shape[0]

    def uniform(half_width: float) -> torch.Tensor:
        # drawn on CPU from the seeded generator: identical streams on CPU and GPU runs
        return to_device((torch.rand(n, generator=gen) * 2 - 1) * half_width, x.device)

    angle = uniform(math.radians(policy.rotate_deg))
    scale = 1 + uniform(policy.scale)
    tx, ty = uniform(2 * policy.shift), uniform(2 * policy.shift)
    flip = to_device(torch.rand(n, generator=gen) < 0.5, x.device) if policy.hflip else torch.zeros(n, dtype=torch.bool, device=x.device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.where(flip, -1.0, 1.0)
    theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the border so warps do not paint black frames around signs and faces
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if policy.jitter:
        bright = 1 + uniform(policy.jitter).view(n, 1, 1, 1)
        contrast = 1 + uniform(policy.jitter).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * bright
    return x.clamp(0, 1)
