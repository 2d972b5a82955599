"""Per-epoch checkpoints: written atomically, loaded with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from runner.store import atomic_path
from runner.training.engine import TrainState
from runner.training.parts import Parts, unwrap


def save_checkpoint(path: Path, state: TrainState, parts: Parts, run_id: str) -> None:
    payload = {
        "run_id": run_id,
        "epoch": state.epoch,
        "model": unwrap(parts.model).state_dict(),
        "loss": unwrap(parts.loss_fn).state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": {"last_epoch": parts.scheduler.last_epoch},
        "steps": {k: torch.tensor(v, dtype=torch.float64) for k, v in state.steps.items()},
        "epochs": state.epochs,
        "snapshots": state.snapshots,
        "elapsed_s": state.elapsed_s,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, parts: Parts, run_id: str) -> Optional[TrainState]:
    """Restore parts from path and return the TrainState, or None when there is none to trust."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start over rather than trust it
        return None
    if payload.get("run_id") != run_id:
        return None
    unwrap(parts.model).load_state_dict(payload["model"])
    unwrap(parts.loss_fn).load_state_dict(payload["loss"])
    parts.optimizer.load_state_dict(payload["optimizer"])
    parts.scheduler.last_epoch = payload["scheduler"]["last_epoch"]
    parts.scheduler._last_lr = [g["lr"] for g in parts.optimizer.param_groups]
    state = TrainState(epoch=payload["epoch"], epochs=payload["epochs"], snapshots=payload["snapshots"],
                       elapsed_s=payload["elapsed_s"])
    state.steps = {k: [int(x) if k in ("epoch", "step") else float(x) for x in v.tolist()]
                   for k, v in payload["steps"].items()}
    return state
