"""The training loop: steps, per-epoch evaluation and stored embeddings. No file I/O.

Randomness is keyed by (seed, epoch): the sampler, the augmentation generator and
torch's global generator are reseeded at the start of every epoch, so a run resumed
from the checkpoint of epoch e replays epochs e+1.. exactly as an uninterrupted run.

Images come from a batch source: DeviceData (memory mode: the splits' tensors on the device,
augmented there) or runner.training.batches.StreamBatches (stream mode: a DataLoader).
`fit` takes the TrainConfig and the seed, not the whole RunConfig, and returns the
TrainState; an epoch callback that returns a reason (a string) ends training after
that epoch, with `state.stop_reason` set.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol as Interface

import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

from runner.config import TrainConfig
from runner.data.augment import augment_batch, to_device
from runner.data.splits import Splits
from runner.dist import DistEnv
from runner.losses import loss_with_stats
from runner.store import STEP_KEYS
from runner.training.parts import Parts
from runner.training.protocols import STRATIFIED, Protocol, evaluate_splits


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float, what: str = "loss"):
        self.epoch, self.step = epoch, step
        super().__init__(f"non-finite {what} {value} at epoch {epoch}, step {step}")


class NonFiniteEmbeddings(ValueError):
    """The model's embeddings hold NaN or inf (its weights diverged): no metric means anything."""


@dataclass
class TrainState:
    """Everything a checkpoint holds, and what the callbacks see after each epoch."""
    epoch: int = 0
    """Completed epochs (0 = untrained)."""
    steps: dict = field(default_factory=lambda: {k: [] for k in ("epoch", "step", *STEP_KEYS)})
    epochs: list = field(default_factory=list)
    """One dict of metrics per evaluated epoch."""
    snapshots: dict = field(default_factory=dict)
    """epoch -> {"train": emb, "test": emb, ...} stored embeddings (Protocol.stored_splits)."""
    elapsed_s: float = 0.0
    stop_reason: Optional[str] = None
    """Set when an epoch callback ended training early (not checkpointed)."""
    compile_s: Optional[float] = None
    """Duration of the first step of a torch.compile'd model in this process (compilation included)."""


@dataclass(frozen=True)
class DeviceData:
    """The splits' images and labels on the training device, moved there once per fit."""
    images: torch.Tensor
    labels: torch.Tensor
    test_images: torch.Tensor
    val_images: Optional[torch.Tensor]
    eval_images: dict = field(default_factory=dict)
    """Images of the other splits the protocol scores (query, gallery), by split name."""

    @classmethod
    def of(cls, splits: Splits, device: torch.device, protocol: Protocol = STRATIFIED) -> "DeviceData":
        val = splits.val.images.to(device) if splits.val is not None else None
        extra = {name: getattr(splits, name).images.to(device) for name in protocol.stored_splits
                 if name not in ("train", "test")}
        return cls(splits.train.images.to(device), splits.train.labels.to(device),
                   splits.test.images.to(device), val, extra)

    def train_batches(self, parts: Parts, epoch: int, gen: torch.Generator) -> Iterator:
        """(augmented float images, labels) on the device, one P×K batch of parts.sampler at a time."""
        for idx in parts.sampler.batches(epoch):
            # a plain host-to-GPU copy waits for the queued kernels: pinned + non_blocking does not
            idx_t = to_device(torch.as_tensor(idx), self.images.device)
            yield augment_batch(self.images[idx_t], parts.policy, gen), self.labels[idx_t]

    def split_names(self) -> list[str]:
        """The splits evaluate_epoch embeds, in order."""
        return ["train", "test", *self.eval_images, *(["val"] if self.val_images is not None else [])]

    def embed_split(self, model: torch.nn.Module, name: str, env: DistEnv) -> torch.Tensor:
        images = {"train": self.images, "test": self.test_images, "val": self.val_images}.get(name)
        return embed(model, self.eval_images[name] if images is None else images, env)


class BatchSource(Interface):
    """What the loop reads images from: DeviceData (memory) or runner.training.batches.StreamBatches."""

    def train_batches(self, parts: Parts, epoch: int, gen: torch.Generator) -> Iterator: ...
    def split_names(self) -> list[str]: ...
    def embed_split(self, model: torch.nn.Module, name: str, env: DistEnv) -> torch.Tensor: ...


EpochCallback = Callable[[TrainState], Optional[str]]
"""Called after every epoch (evaluated or not); a returned string ends training with that reason."""


def fit(t: TrainConfig, seed: int, splits: Splits, parts: Parts, env: DistEnv,
        state: Optional[TrainState] = None, on_epoch_end: Optional[EpochCallback] = None,
        progress: bool = False, protocol: Protocol = STRATIFIED, source: Optional[BatchSource] = None,
        scored_every_epoch: bool = False) -> TrainState:
    """Train from state.epoch to parts.epochs, evaluating (by protocol) the epochs `evaluated` picks;
    on_epoch_end is called after every epoch (`is_evaluated(state)` tells whether it has a new row).

    source: where batches and evaluation images come from; None moves the splits' images to the
    device (DeviceData, memory mode); runner.training.batches.StreamBatches streams them.
    scored_every_epoch: a caller decides on each epoch's scores (a Tune scheduler): see eval_interval.
    """
    state = state or TrainState()
    data = source if source is not None else DeviceData.of(splits, parts.device, protocol)
    every = eval_interval(t, splits, scored_every_epoch)
    if state.epoch == 0 and not state.epochs:
        record_epoch(parts, splits, data, env, state, t.save_every, 0.0, protocol)
        if on_epoch_end and _stopped(state, on_epoch_end(state)):
            return state
    for epoch in range(state.epoch + 1, parts.epochs + 1):
        t0 = time.perf_counter()
        train_one_epoch(parts, data, epoch, state, seed, t.grad_clip, progress)
        state.epoch = epoch
        train_s = time.perf_counter() - t0
        if evaluated(epoch, parts.epochs, t.save_every, every):
            record_epoch(parts, splits, data, env, state, t.save_every, train_s, protocol)
        else:
            state.elapsed_s += train_s
        if on_epoch_end and _stopped(state, on_epoch_end(state)):
            return state
    return state


AUTO_EVAL_MAX_IMAGES = 20_000
"""train.eval_every auto, for a run whose every epoch's scores are asked for (Tune): every epoch up to
this many images in the splits, else the stored epochs."""


def eval_interval(t: TrainConfig, splits: Splits, scored_every_epoch: bool = False) -> int:
    """train.eval_every, with 0 (auto) resolved: the stored epochs (save_every) only, which is what
    run.h5's embeddings and the report's first-vs-last figures read; every epoch for a run whose
    scheduler decides on each epoch's scores, while its splits are small enough to score cheaply."""
    if t.eval_every:
        return t.eval_every
    n = sum(len(s) for s in (splits.train, splits.test, splits.val) if s is not None)  # test holds query + gallery
    return 1 if scored_every_epoch and n <= AUTO_EVAL_MAX_IMAGES else t.save_every


def evaluated(epoch: int, last: int, save_every: int, eval_every: int) -> bool:
    """Epoch 0, the last epoch, the stored epochs (save_every) and every eval_every-th epoch."""
    return epoch in (0, last) or epoch % save_every == 0 or epoch % eval_every == 0


def is_evaluated(state: TrainState) -> bool:
    """Whether the epoch just completed has its row in state.epochs (metrics to report)."""
    return bool(state.epochs) and state.epochs[-1]["epoch"] == state.epoch


def _stopped(state: TrainState, reason: Optional[str]) -> bool:
    state.stop_reason = reason
    return reason is not None


def seed_everything(seed: int, epoch: int) -> None:
    random.seed(seed * 100003 + epoch)
    np.random.seed((seed * 100003 + epoch) % 2**32)
    torch.manual_seed(seed * 100003 + epoch)


def batch_distances(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean positive and negative pair distance within a batch (a loss-independent view)."""
    d = torch.cdist(emb.detach().float(), emb.detach().float())
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos, neg = same & ~eye, ~same
    return (d * pos).sum() / pos.sum().clamp_min(1), (d * neg).sum() / neg.sum().clamp_min(1)


def train_step(parts: Parts, images: torch.Tensor, labels: torch.Tensor, grad_clip: Optional[float]) -> list:
    """One optimiser step; returns the step's diagnostics as 0-dim tensors (no host sync)."""
    with torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=parts.amp):
        emb, norm = parts.model(images, return_norm=True)
    if emb.dtype in (torch.float16, torch.bfloat16):  # the loss in float32 under AMP; float64 models stay float64
        emb = emb.float()
    indices = parts.miner(emb, labels) if parts.miner is not None else None
    loss, active = loss_with_stats(parts.loss_fn, emb, labels, indices)
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


def train_one_epoch(parts: Parts, data: BatchSource, epoch: int, state: TrainState, seed: int,
                    grad_clip: Optional[float], progress: bool = False) -> None:
    """Run epoch `epoch` (1-based) and append its step records to state.steps."""
    seed_everything(seed, epoch)
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    parts.model.train()
    records = []
    iterator = data.train_batches(parts, epoch, gen)
    if progress:
        iterator = tqdm(iterator, total=len(parts.sampler), desc=f"epoch {epoch}/{parts.epochs}", leave=False)
    first_step = len(state.steps["step"])
    for i, (x, labels) in enumerate(iterator):
        if parts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if parts.compiled and state.compile_s is None:  # this step compiles the model: time it once
            t0 = time.perf_counter()
            rec = train_step(parts, x, labels, grad_clip)
            state.compile_s = time.perf_counter() - t0
        else:
            rec = train_step(parts, x, labels, grad_clip)
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
    return gather_rows(local, len(images), env)


def gather_rows(local: torch.Tensor, n: int, env: DistEnv) -> torch.Tensor:
    """All n rows on the host, from each rank's share (rows rank, rank + world_size, ...)."""
    if not env.distributed:
        return local.cpu()
    size = (n + env.world_size - 1) // env.world_size
    padded = torch.zeros(size, local.shape[1], device=local.device)
    padded[:len(local)] = local
    parts = [torch.zeros_like(padded) for _ in range(env.world_size)]
    tdist.all_gather(parts, padded)
    full = torch.zeros(n, local.shape[1])
    for r, part in enumerate(parts):
        full[r::env.world_size] = part[:len(range(r, n, env.world_size))].cpu()
    return full


def evaluate_epoch(parts: Parts, splits: Splits, data: BatchSource, env: DistEnv,
                   protocol: Protocol = STRATIFIED) -> tuple[dict, dict]:
    """Test (and val_*) metrics by protocol, and the embeddings of protocol.stored_splits by split name."""
    emb = {name: data.embed_split(parts.model, name, env) for name in data.split_names()}
    bad = [name for name, e in emb.items() if not torch.isfinite(e).all()]
    if bad:
        raise NonFiniteEmbeddings(f"non-finite embeddings of {', '.join(bad)}")
    metrics = evaluate_splits(protocol, splits, emb)
    return metrics, {name: emb[name] for name in protocol.stored_splits}


def record_epoch(parts: Parts, splits: Splits, data: BatchSource, env: DistEnv, state: TrainState,
                 save_every: int, train_s: float, protocol: Protocol = STRATIFIED) -> None:
    """Evaluate, append the epoch's row to state.epochs and keep the embeddings to store."""
    t0 = time.perf_counter()
    try:
        metrics, stored = evaluate_epoch(parts, splits, data, env, protocol)
    except NonFiniteEmbeddings:  # the weights diverged in the last steps: fail the run where it happened
        raise NonFiniteLoss(state.epoch, len(state.steps["step"]) - 1, float("nan"), "embeddings") from None
    epoch = state.epoch
    losses_this = [l for e, l in zip(state.steps["epoch"], state.steps["loss"]) if e == epoch]
    state.epochs.append({"epoch": epoch, "train_loss": float(np.mean(losses_this)) if losses_this else float("nan"),
                         "train_s": train_s, "eval_s": time.perf_counter() - t0, **metrics})
    state.elapsed_s += train_s
    # keep every save_every-th epoch, the last, and always the latest (a run stopped early
    # by a scheduler stores the embeddings it ended with)
    previous = max(state.snapshots, default=None)
    if previous is not None and previous % save_every != 0:
        del state.snapshots[previous]
    state.snapshots[epoch] = stored
