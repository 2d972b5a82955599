"""The training loop: step, log, evaluate. No file I/O here (see runner.train).

Randomness is keyed by (seed, epoch): the sampler, the augmentation generator and
torch's global generator are reseeded at the start of every epoch, so a run resumed
from the checkpoint of epoch e replays epochs e+1.. exactly as an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as tdist

from runner import evaluate, losses
from runner.augment import AugmentPolicy, augment_batch, to_device
from runner.config import RunConfig, TrainConfig
from runner.data import PKSampler, RandomBatchSampler, Splits
from runner.dist import DistEnv
from runner.models import build_model, channel_stats


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step = epoch, step
        super().__init__(f"non-finite loss {value} at epoch {epoch}, step {step}")


STEP_KEYS = ("loss", "active_fraction", "pos_distance", "neg_distance", "embedding_norm", "lr")


@dataclass
class TrainState:
    """Everything a checkpoint holds, and what the callbacks see after each epoch."""
    epoch: int = 0
    """Completed epochs (0 = untrained)."""
    steps: dict = field(default_factory=lambda: {k: [] for k in ("epoch", "step", *STEP_KEYS)})
    epochs: list = field(default_factory=list)
    """One dict of metrics per evaluated epoch."""
    snapshots: dict = field(default_factory=dict)
    """epoch -> {"train": emb, "test": emb} stored embeddings."""
    elapsed_s: float = 0.0


def seed_everything(seed: int, epoch: int) -> None:
    random.seed(seed * 100003 + epoch)
    np.random.seed((seed * 100003 + epoch) % 2**32)
    torch.manual_seed(seed * 100003 + epoch)


def make_sampler(t: TrainConfig, labels: torch.Tensor, seed: int, env: DistEnv):
    if t.sampler == "pk":
        return PKSampler(labels.numpy(), t.batch_size, t.samples_per_class, seed, env.rank, env.world_size)
    return RandomBatchSampler(labels.numpy(), t.batch_size, seed, env.rank, env.world_size)


def make_optimizer(params: list, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


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


def batch_distances(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean positive and negative pair distance within a batch (a loss-independent view)."""
    d = torch.cdist(emb.detach().float(), emb.detach().float())
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos, neg = same & ~eye, ~same
    return (d * pos).sum() / pos.sum().clamp_min(1), (d * neg).sum() / neg.sum().clamp_min(1)


@dataclass
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
    images: Optional[torch.Tensor] = None
    """Training images and labels, moved to the device once by fit()."""
    labels: Optional[torch.Tensor] = None
    test_images: Optional[torch.Tensor] = None
    world_size: int = 1
    """Ranks in the run: PML's DistributedLossWrapper returns the loss × world_size."""
    epochs: int = 1
    """Epochs this run trains: train.epochs, or more to reach train.min_steps."""


def build_parts(cfg: RunConfig, splits: Splits, policy: AugmentPolicy, env: DistEnv, device: torch.device) -> Parts:
    """Model, loss, miner, optimiser and schedule, wrapped for DDP when world_size > 1."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    train = splits.train
    mean, std = channel_stats(train.images)
    model = build_model(cfg.model, cfg.embedding, train.images.shape[1], train.images.shape[-1], mean, std).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_fn = losses.build_loss(cfg.loss, num_classes=len(train.class_names), embedding_size=cfg.embedding.dim).to(device)
    miner = losses.build_miner(cfg.miner)
    params = [p for p in model.parameters() if p.requires_grad] + list(loss_fn.parameters())
    if env.distributed:
        from pytorch_metric_learning.utils import distributed as pml_dist
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        loss_fn = pml_dist.DistributedLossWrapper(loss_fn)
        miner = pml_dist.DistributedMinerWrapper(miner) if miner is not None else None
    optimizer = make_optimizer(params, cfg.train)
    sampler = make_sampler(cfg.train, train.labels, cfg.seed, env)
    epochs = planned_epochs(cfg.train, len(sampler))
    scheduler = make_schedule(optimizer, cfg.train, epochs * len(sampler))
    amp = cfg.train.amp and device.type == "cuda"
    return Parts(model, loss_fn, miner, optimizer, scheduler, sampler, policy, device, amp,
                 world_size=env.world_size, epochs=epochs)


def planned_epochs(t: TrainConfig, steps_per_epoch: int) -> int:
    """train.epochs, raised so that the run makes at least train.min_steps steps."""
    return max(t.epochs, -(-t.min_steps // steps_per_epoch))


def train_step(parts: Parts, images: torch.Tensor, labels: torch.Tensor, grad_clip: Optional[float]) -> list:
    """One optimiser step; returns the step's diagnostics as 0-dim tensors (no host sync)."""
    with torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=parts.amp):
        emb, norm = parts.model(images, return_norm=True)
    if emb.dtype in (torch.float16, torch.bfloat16):  # the loss in float32 under AMP; float64 models stay float64
        emb = emb.float()
    indices = parts.miner(emb, labels) if parts.miner is not None else None
    loss, active = losses.loss_with_stats(parts.loss_fn, emb, labels, indices)
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), grad_clip)
    parts.optimizer.step()
    lr = parts.scheduler.get_last_lr()[0]
    parts.scheduler.step()
    d_pos, d_neg = batch_distances(emb, labels)
    # log the loss of the global batch: the wrapper's × world_size only undoes DDP's gradient averaging
    return [loss.detach() / parts.world_size, torch.as_tensor(active, dtype=torch.float32, device=emb.device).detach(),
            d_pos, d_neg, norm.mean(), to_device(torch.tensor(lr), emb.device)]


def train_one_epoch(parts: Parts, cfg: RunConfig, splits: Splits, epoch: int, state: TrainState,
                    progress: bool = False) -> None:
    """Run epoch `epoch` (1-based) and append its step records to state.steps."""
    seed_everything(cfg.seed, epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    images, labels = parts.images, parts.labels
    parts.model.train()
    batches = parts.sampler.batches(epoch)
    records = []
    iterator = batches
    if progress:
        from tqdm import tqdm
        iterator = tqdm(batches, desc=f"epoch {epoch}/{parts.epochs}", leave=False)
    first_step = len(state.steps["step"])
    for i, idx in enumerate(iterator):
        # a plain host-to-GPU copy waits for the queued kernels: pinned + non_blocking does not
        idx_t = to_device(torch.as_tensor(idx), images.device)
        x = augment_batch(images[idx_t], parts.policy, gen)
        if parts.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        rec = train_step(parts, x, labels[idx_t], cfg.train.grad_clip)
        # on CPU a finiteness check costs nothing; on GPU it waits for the end of the epoch
        if parts.device.type == "cpu" and not torch.isfinite(rec[0]):
            raise NonFiniteLoss(epoch, first_step + i, float(rec[0]))
        records.append(torch.stack(rec))
    table = torch.stack(records).cpu()  # the one host sync of the epoch
    bad = torch.nonzero(~torch.isfinite(table[:, 0])).flatten()
    if len(bad):
        raise NonFiniteLoss(epoch, first_step + int(bad[0]), float(table[bad[0], 0]))
    state.steps["epoch"] += [epoch] * len(records)
    state.steps["step"] += list(range(first_step, first_step + len(records)))
    for j, key in enumerate(STEP_KEYS):
        state.steps[key] += table[:, j].tolist()


@torch.inference_mode()
def embed(model: torch.nn.Module, images: torch.Tensor, env: DistEnv, batch_size: int = 512) -> torch.Tensor:
    """Embeddings of all images (eval mode). Each rank embeds a shard; shards are gathered."""
    model.eval()
    rows = torch.arange(env.rank, len(images), env.world_size, device=images.device)
    out = [model(images[rows[i:i + batch_size]]).float() for i in range(0, len(rows), batch_size)]
    local = torch.cat(out) if out else torch.zeros(0, 1, device=images.device)
    if not env.distributed:
        return local.cpu()
    size = (len(images) + env.world_size - 1) // env.world_size
    padded = torch.zeros(size, local.shape[1], device=local.device)
    padded[:len(local)] = local
    parts = [torch.zeros_like(padded) for _ in range(env.world_size)]
    tdist.all_gather(parts, padded)
    full = torch.zeros(len(images), local.shape[1])
    for r, part in enumerate(parts):
        n = len(range(r, len(images), env.world_size))
        full[r::env.world_size] = part[:n].cpu()
    return full


def evaluate_epoch(parts: Parts, splits: Splits, env: DistEnv) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Test metrics (test queries vs train references), plus val_* metrics when a val split exists."""
    model = parts.model
    train_emb = embed(model, parts.images, env)
    test_emb = embed(model, parts.test_images, env)
    metrics = evaluate.compute_metrics(test_emb, splits.test.labels, train_emb, splits.train.labels)
    if splits.val is not None:
        val_emb = embed(model, splits.val.images.to(parts.device), env)
        val = evaluate.compute_metrics(val_emb, splits.val.labels, train_emb, splits.train.labels)
        metrics.update({f"val_{k}": v for k, v in val.items()})
    return metrics, train_emb, test_emb


def fit(cfg: RunConfig, splits: Splits, parts: Parts, env: DistEnv, state: Optional[TrainState] = None,
        on_epoch_end: Optional[Callable[[TrainState, Parts], None]] = None, progress: bool = False) -> TrainState:
    """Train from state.epoch to parts.epochs, evaluating and calling on_epoch_end each epoch."""
    state = state or TrainState()
    parts.images = splits.train.images.to(parts.device)
    parts.labels = splits.train.labels.to(parts.device)
    parts.test_images = splits.test.images.to(parts.device)
    if state.epoch == 0 and not state.epochs:
        record_epoch(parts, splits, env, state, cfg, 0.0)
        if on_epoch_end:
            on_epoch_end(state, parts)
    for epoch in range(state.epoch + 1, parts.epochs + 1):
        t0 = time.perf_counter()
        train_one_epoch(parts, cfg, splits, epoch, state, progress)
        state.epoch = epoch
        record_epoch(parts, splits, env, state, cfg, time.perf_counter() - t0)
        if on_epoch_end:
            on_epoch_end(state, parts)
    return state


def record_epoch(parts: Parts, splits: Splits, env: DistEnv, state: TrainState, cfg: RunConfig, train_s: float) -> None:
    t0 = time.perf_counter()
    metrics, train_emb, test_emb = evaluate_epoch(parts, splits, env)
    epoch = state.epoch
    losses_this = [l for e, l in zip(state.steps["epoch"], state.steps["loss"]) if e == epoch]
    state.epochs.append({"epoch": epoch, "train_loss": float(np.mean(losses_this)) if losses_this else float("nan"),
                         "train_s": train_s, "eval_s": time.perf_counter() - t0, **metrics})
    state.elapsed_s += train_s
    # keep every save_every-th epoch, the last, and always the latest (a run stopped early
    # by a scheduler stores the embeddings it ended with)
    previous = max(state.snapshots, default=None)
    if previous is not None and previous % cfg.train.save_every != 0:
        del state.snapshots[previous]
    state.snapshots[epoch] = {"train": train_emb, "test": test_emb}
