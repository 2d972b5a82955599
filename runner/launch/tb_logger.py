"""TensorBoard logging for one run: scalars, HParams and the embedding projector.

Only the main rank creates a logger. tensorboard is imported on first use: it costs
seconds at start-up and most runs on a cluster never look at it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from runner.config import flatten
from runner.store import EventFile

SPRITE_LIMIT_PX = 8192  # the projector rejects larger sprite sheets
MAX_PROJECTOR_POINTS = 2000


def hparams(config: dict) -> dict:
    """The flattened config with values HParams accepts: lists, mappings and None as strings."""
    def value(v):
        if isinstance(v, (bool, int, float, str)):
            return v
        return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
    return {k: value(v) for k, v in flatten(config).items()}


STEP_SCALARS = ("loss", "active_fraction", "pos_distance", "neg_distance", "embedding_norm", "lr")


class TBLogger:
    """Scalars through runner.store.EventFile (written in this thread, flushed after each call);
    torch's SummaryWriter, opened on first use, for the HParams entry and the projector only."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self.events = EventFile(self.logdir)
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # tensorboard costs seconds to import; few runs look
            self._writer = SummaryWriter(str(self.logdir))
        return self._writer

    def log_steps(self, steps: dict, start: int) -> None:
        """Per-step scalars from row `start` on (rows before were logged already), one event a step."""
        for i in range(start, len(steps["step"])):
            self.events.scalars({f"step/{key}": steps[key][i] for key in STEP_SCALARS if math.isfinite(steps[key][i])},
                                steps["step"][i])
        self.events.flush()

    def log_epoch(self, row: dict) -> None:
        self.events.scalars({f"epoch/{key}": value for key, value in row.items()
                             if key != "epoch" and isinstance(value, float) and math.isfinite(value)}, row["epoch"])
        self.events.flush()

    def log_hparams(self, config: dict, metrics: dict, run_name: str, first: Sequence[str] = ()) -> None:
        """One HParams entry per run, so TensorBoard compares a whole grid in one table.

        first: the keys the grid varies; the table's columns follow the entry's order, so
        they come first and the constants (data.augment, data.hflip...) after them.
        """
        flat = hparams(config)
        flat.pop("data.root", None)
        hp = {**{k: flat[k] for k in first if k in flat}, **{k: v for k, v in flat.items() if k not in first}}
        metric_dict = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.writer.add_hparams(hp, metric_dict, run_name=run_name)

    def log_projector(self, emb: np.ndarray, labels: np.ndarray, class_names: list[str],
                      images: torch.Tensor | None, seed: int = 0) -> None:
        """Embedding projector for (a subsample of) the test set, with labels and image sprites."""
        n = len(emb)
        keep = np.sort(np.random.default_rng(seed).permutation(n)[:MAX_PROJECTOR_POINTS])
        meta = [class_names[int(c)] if int(c) < len(class_names) else str(int(c)) for c in labels[keep]]
        label_img = None
        if images is not None:
            side = SPRITE_LIMIT_PX // math.ceil(math.sqrt(len(keep)))
            img = images[torch.as_tensor(keep)].float().div(255.0)
            if img.shape[-1] > side:
                img = torch.nn.functional.interpolate(img, size=(side, side), mode="bilinear", antialias=True)
            label_img = img
        self.writer.add_embedding(torch.as_tensor(emb[keep]), metadata=meta, label_img=label_img,
                                  global_step=0, tag="test_embeddings")

    def close(self) -> None:
        self.events.close()
        if self._writer is not None:
            self._writer.close()
