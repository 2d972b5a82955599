"""Trunks chosen by name, and the embedding head on top of them."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
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
    import torchvision  # here: ~1 s of import that the small CNNs (and every launcher) do without
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


def check_backbone(name: str) -> None:
    if name not in TRUNKS:
        raise ConfigError("model.backbone", name, f"one of {', '.join(TRUNKS)}{suggest(name, TRUNKS)}")


def make_trunk(cfg: ModelConfig, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """The trunk's architecture (random weights) and the size of its output features."""
    check_backbone(cfg.backbone)
    if cfg.backbone == "small_cnn":
        trunk = SmallCNN(in_channels, image_size, cfg.width, cfg.norm)
        return trunk, trunk.out_features
    return _torchvision_trunk(cfg.backbone, in_channels)


def build_trunk(cfg: ModelConfig, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """Trunk by name, with model.pretrained's weights and model.freeze_trunk applied."""
    trunk, out = make_trunk(cfg, in_channels, image_size)
    if cfg.pretrained:
        load_local_weights(trunk, cfg.pretrained)
    if cfg.freeze_trunk:
        trunk.requires_grad_(False)
    if cfg.freeze_bn:
        for m in batch_norms(trunk):
            m.requires_grad_(False)
    return trunk, out


def batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm))]


# ---------------------------------------------------------------- checks before anything trains

@functools.lru_cache(maxsize=256)  # a pure function of its (hashable) arguments
def min_image_size(cfg: ModelConfig, in_channels: int, height: int, width: int) -> int | None:
    """None when the trunk forwards images of height×width, else the smallest square size that works.

    The trunk is built on the meta device (shapes only, no memory, no arithmetic) and given a
    2-image batch in training mode, as a P×K batch would be.
    """
    if _forwards(cfg, in_channels, height, width):
        return None
    low, high = max(height, width), max(height, width) * 2
    while not _forwards(cfg, in_channels, high, high):
        low, high = high, high * 2
        if high > 4096:
            return high
    while high - low > 1:  # the last failing and the first working size
        mid = (low + high) // 2
        low, high = (low, mid) if _forwards(cfg, in_channels, mid, mid) else (mid, high)
    return high


def _forwards(cfg: ModelConfig, in_channels: int, height: int, width: int) -> bool:
    # torchvision trunks on the meta device (shapes only); the small CNN, a few kB, on the CPU for real:
    # the meta device's function mode imports torch._dynamo (~1.3 s of a launcher's start-up)
    device = "cpu" if cfg.backbone == "small_cnn" else "meta"
    with torch.device(device):
        trunk, _ = make_trunk(cfg, in_channels, width)
        try:
            with torch.no_grad():
                trunk.train()(torch.zeros(2, in_channels, height, width))
        except RuntimeError:  # "Output size is too small" and kin: the maps shrank below 1×1
            return False
    return True


def check_input_size(cfg: ModelConfig, in_channels: int, height: int, width: int, source: str) -> None:
    """ConfigError on data.image_size when the trunk cannot take the data's images (vgg16 on 8×8)."""
    need = min_image_size(cfg, in_channels, height, width)
    if need is not None:
        raise ConfigError("data.image_size", width if height == width else f"{height}x{width}",
                          f"at least {need} for model.backbone {cfg.backbone} ({source}; "
                          f"set data.image_size: {need} or pick another backbone)")


def read_weights(path: str) -> dict:
    """A local weights file as a state dict (torch.load with weights_only=True); ConfigError if unusable."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("model.pretrained", path, "an existing local weights file (no downloads on the cluster)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError (zip), EOFError, ...: all "not loadable"
        raise ConfigError("model.pretrained", path,
                          f"a file torch.load(weights_only=True) reads ({_why(err)})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError("model.pretrained", path, "a state dict (parameter name -> tensor), as torch.save("
                          "trunk.state_dict()) writes")
    return state


def _why(err: Exception) -> str:
    """torch.load's reason in a few words: the WeightsUnpickler's own line, not the advice around it."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].split(". ")[0]
    text = " ".join(text.split())[:120] or "empty or cut short"
    return f"{type(err).__name__}: {text}"


def weights_mismatch(trunk: nn.Module, state: dict) -> str | None:
    """How `state` fails to fit `trunk` (missing or unexpected keys, other shapes), or None.

    Heads of classification checkpoints (fc., classifier.) are expected leftovers, and
    BatchNorm's num_batches_tracked may be absent (older checkpoints).
    """
    own = trunk.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.startswith(("fc.", "classifier."))]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
             f"{shapes[0]} is {list(state[shapes[0]].shape)} in the file, {list(own[shapes[0]].shape)} in the trunk"
             if shapes else ""]
    return ", ".join(p for p in parts if p)


def check_pretrained(cfg: ModelConfig, in_channels: int, image_size: int) -> None:
    """model.pretrained loads with weights_only=True and fits this trunk (built on the meta device)."""
    state = read_weights(cfg.pretrained)
    with torch.device("meta"):
        trunk, _ = make_trunk(cfg, in_channels, image_size)
    problem = weights_mismatch(trunk, state)
    if problem:
        raise ConfigError("model.pretrained", cfg.pretrained,
                          f"weights of the {cfg.backbone} trunk for {in_channels}-channel images ({problem})")


def load_local_weights(trunk: nn.Module, path: str) -> None:
    """Load trunk weights from a local file (weights_only); never from a hub."""
    state = read_weights(path)
    problem = weights_mismatch(trunk, state)
    if problem:
        raise ConfigError("model.pretrained", path, f"weights matching the trunk ({problem})")
    trunk.load_state_dict(state, strict=False)


class EmbeddingNet(nn.Module):
    """Trunk → linear head of embedding.dim → optional L2 normalisation.

    Images come in as uint8; scaling to [0,1] and per-channel standardisation happen
    here so that the stored statistics travel with the model.
    """
    freeze_bn = False
    """model.freeze_bn: the trunk's BatchNorms stay in eval mode while the rest trains."""

    def __init__(self, trunk: nn.Module, features: int, emb: EmbeddingConfig,
                 mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(features, emb.dim)
        self.normalize = emb.normalize
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float())

    def train(self, mode: bool = True) -> "EmbeddingNet":
        """A frozen trunk (model.freeze_trunk: no trainable parameter) stays in eval mode:
        its BatchNorm statistics stay those it was given, so the trunk stays one fixed function."""
        super().train(mode)
        if not any(p.requires_grad for p in self.trunk.parameters()):
            self.trunk.eval()
        if self.freeze_bn:  # fixed BatchNorms keep their running statistics too
            for m in batch_norms(self.trunk):
                m.eval()
        return self

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
    model.freeze_bn = cfg.freeze_bn
    nn.init.normal_(model.head.weight, std=1.0 / math.sqrt(features))
    nn.init.zeros_(model.head.bias)
    return model
