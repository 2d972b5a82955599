"""The built pieces of one run: model, loss, miner, optimiser, schedule and sampler.

Builders take their own sub-configs (never the whole RunConfig): the model its
ModelConfig and EmbeddingConfig, the loss its LossConfig, the loop its TrainConfig.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from pytorch_metric_learning.utils import distributed as pml_dist

from runner.config import EmbeddingConfig, LossConfig, MinerConfig, ModelConfig, TrainConfig
from runner.data.augment import AugmentPolicy
from runner.data.image_set import ImageSet
from runner.data.samplers import PKSampler, RandomBatchSampler
from runner.data.streaming import is_lazy, sample_stats
from runner.dist import DistEnv
from runner.losses import build_loss, build_miner
from runner.training.models import build_model, channel_stats


@dataclass(frozen=True)
class Parts:
    """The built pieces of one run, on its device."""
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    miner: Optional[torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: object
    policy: AugmentPolicy
    device: torch.device
    amp: bool
    world_size: int = 1
    """Ranks in the run: PML's DistributedLossWrapper returns the loss × world_size."""
    epochs: int = 1
    """Epochs this run trains: train.epochs, or more to reach train.min_steps."""
    channels_last: bool = False
    """Model and training batches in channels_last layout (train.channels_last resolved)."""
    compiled: bool = False
    """The model is torch.compile'd (train.compile): its first step compiles it."""


def build_parts(model_cfg: ModelConfig, emb_cfg: EmbeddingConfig, loss_cfg: LossConfig, miner_cfg: MinerConfig,
                t: TrainConfig, seed: int, train: ImageSet, policy: AugmentPolicy, env: DistEnv,
                device: torch.device) -> Parts:
    """Model, loss, miner, optimiser and schedule, wrapped for DDP when world_size > 1."""
    torch.manual_seed(seed)  # identical initial weights on every rank
    if is_lazy(train.images):  # stream mode: ImageNet's stats for a pretrained trunk, else a sample's
        mean, std = sample_stats(train.images, pretrained=model_cfg.pretrained is not None, seed=seed)
    else:
        mean, std = channel_stats(train.images)
    model = build_model(model_cfg, emb_cfg, train.images.shape[1], train.images.shape[-1], mean, std).to(device)
    channels_last = uses_channels_last(t, model_cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        model = torch.compile(model)
    loss_fn = build_loss(loss_cfg, num_classes=len(train.class_names), embedding_size=emb_cfg.dim).to(device)
    miner = build_miner(miner_cfg)
    params = [p for p in model.parameters() if p.requires_grad] + list(loss_fn.parameters())
    if t.trunk_lr is not None:  # two parameter groups; the schedule scales both alike
        trunk = [p for p in model.trunk.parameters() if p.requires_grad]
        rest = [p for p in params if all(p is not q for q in trunk)]
        params = [{"params": trunk, "lr": t.trunk_lr}, {"params": rest}]
    if env.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        loss_fn = pml_dist.DistributedLossWrapper(loss_fn)
        miner = pml_dist.DistributedMinerWrapper(miner) if miner is not None else None
    optimizer = make_optimizer(params, t)
    sampler = make_sampler(t, train.labels, seed, env)
    epochs = planned_epochs(t, len(sampler))
    scheduler = make_schedule(optimizer, t, epochs * len(sampler))
    amp = t.amp and device.type == "cuda"
    return Parts(model, loss_fn, miner, optimizer, scheduler, sampler, policy, device, amp,
                 world_size=env.world_size, epochs=epochs, channels_last=channels_last, compiled=t.compile)


CONV_BACKBONES = ("small_cnn", "resnet18", "resnet50", "vgg16")
"""Backbones made of 2-d convolutions: channels_last speeds them up on CPU and CUDA alike."""


def uses_channels_last(t: TrainConfig, model_cfg: ModelConfig) -> bool:
    """train.channels_last, with None (auto) meaning on for the conv backbones."""
    return model_cfg.backbone in CONV_BACKBONES if t.channels_last is None else t.channels_last


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / PML distributed wrappers."""
    return getattr(module, "module", getattr(module, "loss", module))


def make_sampler(t: TrainConfig, labels: torch.Tensor, seed: int, env: DistEnv):
    if t.sampler == "pk":
        return PKSampler(labels.numpy(), t.batch_size, t.samples_per_class, seed, env.rank, env.world_size,
                         t.steps_per_epoch)
    return RandomBatchSampler(labels.numpy(), t.batch_size, seed, env.rank, env.world_size, t.steps_per_epoch)


def make_optimizer(params: list, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True,
                               foreach=True)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, foreach=True)


def make_schedule(opt: torch.optim.Optimizer, t: TrainConfig, total_steps: int):
    """Linear warm-up, then cosine decay to zero (or flat): a function of the global step."""
    warmup = int(t.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if t.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def planned_epochs(t: TrainConfig, steps_per_epoch: int) -> int:
    """train.epochs, raised so that the run makes at least train.min_steps steps."""
    return max(t.epochs, -(-t.min_steps // steps_per_epoch))
