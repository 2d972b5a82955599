"""`StreamBatches`: the engine's batch source in stream mode (data.storage: stream).

One DataLoader per run, its workers persistent, reads training batches and evaluation
images alike: its batch sampler is a BatchPlan refilled before each pass, with the P×K
sampler's batches for an epoch (each item seeded by (seed, epoch, step, position)) or a
split's rows for evaluation (this rank's share, rows rank, rank + world_size, ...).
The memory-mode source is engine.DeviceData, unchanged.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from runner.data.augment import AugmentPolicy
from runner.data.splits import Splits
from runner.data.streaming import BatchPlan, StreamDataset, is_lazy, make_loader, sample_seed
from runner.dist import DistEnv
from runner.training.engine import gather_rows
from runner.training.parts import Parts
from runner.training.protocols import STRATIFIED, Protocol

EVAL_BATCH = 256
"""Images per evaluation batch (host memory: 256 × 3 × 224² uint8 is 38 MiB)."""


class StreamBatches:
    """Training batches and evaluation images decoded in DataLoader workers."""

    def __init__(self, splits: Splits, policy: AugmentPolicy, seed: int, num_workers: int, device: torch.device,
                 protocol: Protocol = STRATIFIED):
        train = splits.train.images
        self.splits, self.seed, self.device = splits, seed, device
        self.names = ["train", "test", *(n for n in protocol.stored_splits if n not in ("train", "test")),
                      *(["val"] if splits.val is not None else [])]
        self.plan = BatchPlan()
        self.loader = make_loader(StreamDataset(train.source, train.size, policy), self.plan, num_workers,
                                  pin_memory=device.type == "cuda")

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        # the layout is train.channels_last's, applied by the train loop to batches of either source
        return x.to(self.device, non_blocking=True).float().div_(255.0)

    def train_batches(self, parts: Parts, epoch: int, gen: torch.Generator) -> Iterator:
        """(augmented float images, labels) on the device for epoch's P×K batches (gen is unused)."""
        rows, labels = self.splits.train.images.rows, self.splits.train.labels.tolist()
        self.plan.batches = [[(int(rows[i]), sample_seed(self.seed, epoch, step, j), labels[i])
                              for j, i in enumerate(idx.tolist())]
                             for step, idx in enumerate(parts.sampler.batches(epoch))]
        for x, y in self.loader:
            yield self._to_device(x), y.to(self.device, non_blocking=True)

    def split_names(self) -> list[str]:
        return list(self.names)

    @torch.inference_mode()
    def embed_split(self, model: torch.nn.Module, name: str, env: DistEnv) -> torch.Tensor:
        """Embeddings of every image of split `name` (evaluation transform), gathered across ranks."""
        model.eval()
        rows = getattr(self.splits, name).images.rows
        mine = rows[env.rank::env.world_size].tolist()
        self.plan.batches = [[(r, None, -1) for r in mine[i:i + EVAL_BATCH]] for i in range(0, len(mine), EVAL_BATCH)]
        out = [model(self._to_device(x)).float() for x, _ in self.loader]
        local = torch.cat(out) if out else torch.zeros(0, 1, device=self.device)
        return gather_rows(local, len(rows), env)


def stream_source(splits: Splits, parts: Parts, seed: int, num_workers: int,
                  protocol: Protocol = STRATIFIED) -> Optional[StreamBatches]:
    """StreamBatches when the splits stream (data.storage stream, or auto choosing it); None: in memory."""
    if not is_lazy(splits.train.images):
        return None
    return StreamBatches(splits, parts.policy, seed, num_workers, parts.device, protocol)
