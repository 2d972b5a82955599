"""Checks of a resolved run that need no training, made before anything is queued."""

from __future__ import annotations

from runner.config import RunConfig
from runner.data import check_data
from runner.losses import check_compatible


def validate_run(cfg: RunConfig) -> None:
    """Loss/miner pairing and the data's name and location; a one-line ConfigError on the first problem."""
    check_compatible(cfg.loss, cfg.miner)
    check_data(cfg.data)
