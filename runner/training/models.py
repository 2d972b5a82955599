"""Trunks chosen by name, and the embedding head on top of them."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from runner.config import ConfigError, EmbeddingConfig, ModelConfig, suggest


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class SmallCNN(nn.Module):
    """Three conv blocks sized for 8–64 px images; pools only while the map is large enough."""

    def __init__(self, in_channels: int, image_size: int, width: int = 64, norm: str = "batch"):
        super().__init__()
        layers, c_in, size = [], in_channels, image_size
        for i in range(3):
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"), _norm(norm, c_out), nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 3, padding=1, bias=norm == "none"), _norm(norm, c_out), nn.ReLU(inplace=True)]
            # 8×8 digits pool twice, 28 px three times: keep at least a 2×2 map
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c_out
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.out_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision_trunk(name: str, in_channels: int) -> tuple[nn.Module, int]:
    net = getattr(torchvision.models, name)(weights=None)
    if name.startswith("resnet"):
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        out = net.fc.in_features
        net.fc = nn.Identity()
    else:  # vgg
        if in_channels != 3:
            net.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        out = 512
        net.classifier = nn.Identity()
    return net, out


TRUNKS = ("small_cnn", "resnet18", "resnet50", "vgg16")


def build_trunk(cfg: ModelConfig, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """Trunk by name and the size of its output features."""
    if cfg.backbone == "small_cnn":
        trunk = SmallCNN(in_channels, image_size, cfg.width, cfg.norm)
        out = trunk.out_features
    elif cfg.backbone in TRUNKS:
        trunk, out = _torchvision_trunk(cfg.backbone, in_channels)
    else:
        raise ConfigError("model.backbone", cfg.backbone, f"one of {', '.join(TRUNKS)}{suggest(cfg.backbone, TRUNKS)}")
    if cfg.pretrained:
        load_local_weights(trunk, cfg.pretrained)
    if cfg.freeze_trunk:
        trunk.requires_grad_(False)
    return trunk, out


def load_local_weights(trunk: nn.Module, path: str) -> None:
    """Load trunk weights from a local file (weights_only); never from a hub."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("model.pretrained", path, "an existing local weights file (no downloads on the cluster)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    # heads of classification checkpoints (fc, classifier) are expected leftovers
    unexpected = [k for k in unexpected if not k.startswith(("fc.", "classifier."))]
    if unexpected or len(missing) > len(trunk.state_dict()) // 2:
        raise ConfigError("model.pretrained", path,
                          f"weights matching the trunk ({len(missing)} missing, {len(unexpected)} unexpected keys)")


class EmbeddingNet(nn.Module):
    """Trunk → linear head of embedding.dim → optional L2 normalisation.

    Images come in as uint8; scaling to [0,1] and per-channel standardisation happen
    here so that the stored statistics travel with the model.
    """

    def __init__(self, trunk: nn.Module, features: int, emb: EmbeddingConfig,
                 mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(features, emb.dim)
        self.normalize = emb.normalize
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float())

    def forward(self, x: torch.Tensor, return_norm: bool = False):
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = (x - self.mean) / self.std
        emb = self.head(self.trunk(x))
        norm = emb.detach().norm(dim=1)
        if self.normalize:
            emb = F.normalize(emb, dim=1)
        return (emb, norm) if return_norm else emb


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images in [0,1] units (from the training split)."""
    x = images.float().div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean, std


def build_model(cfg: ModelConfig, emb: EmbeddingConfig, in_channels: int, image_size: int,
                mean: torch.Tensor, std: torch.Tensor) -> EmbeddingNet:
    trunk, features = build_trunk(cfg, in_channels, image_size)
    model = EmbeddingNet(trunk, features, emb, mean, std)
    nn.init.normal_(model.head.weight, std=1.0 / math.sqrt(features))
    nn.init.zeros_(model.head.bias)
    return model
