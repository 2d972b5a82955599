"""Live progress of a run: one line per epoch on stdout (the SLURM output file) and in train.log.

Lines go through the `dmlrunner` logger, so a user silences or redirects them with
`logging` as usual (`logging.getLogger("dmlrunner").setLevel(logging.WARNING)`). Only
rank 0 logs. The tqdm bar of an epoch's steps is for a person at a terminal; these
lines are for `tail -f logs/<job>_<task>.out` of a ten-hour run.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional

LOGGER = logging.getLogger("dmlrunner")
KEY_METRIC = "map_at_r"
"""The metric each epoch line shows (its validation twin too, when there is a validation split)."""


def _ensure_stdout_handler() -> None:
    """stdout, unless the user (or an embedding application) configured the logger already; a level
    the user set before the first run (setLevel(WARNING) to silence it) is kept."""
    if not LOGGER.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
        if LOGGER.level == logging.NOTSET:
            LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False


class EpochLog:
    """Formats and writes the per-epoch lines of one run; `close()` detaches its train.log."""

    def __init__(self, run_id: str, log_file: Optional[Path], epochs: int, samples_per_step: int):
        _ensure_stdout_handler()
        self.run_id, self.epochs, self.samples_per_step = run_id, epochs, samples_per_step
        self.started = time.perf_counter()
        self.file_handler = None
        if log_file is not None:
            self.file_handler = logging.FileHandler(log_file, mode="a")
            self.file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            LOGGER.addHandler(self.file_handler)

    def epoch(self, row: dict, steps_this_epoch: int, first_epoch: int) -> str:
        """Log one epoch (a row of history/epochs; an epoch not evaluated has no metric: `-`); returns the line."""
        epoch = int(row["epoch"])
        elapsed = time.perf_counter() - self.started
        done = epoch - first_epoch
        eta = elapsed / done * (self.epochs - epoch) if done > 0 else float("nan")
        speed = steps_this_epoch * self.samples_per_step / row["train_s"] if row.get("train_s") else float("nan")
        parts = [f"run {self.run_id} epoch {epoch}/{self.epochs}", f"loss {row.get('train_loss', float('nan')):.4f}",
                 f"{KEY_METRIC} {row[KEY_METRIC]:.4f}" if KEY_METRIC in row else f"{KEY_METRIC} -"]
        if f"val_{KEY_METRIC}" in row:
            parts.append(f"val_{KEY_METRIC} {row[f'val_{KEY_METRIC}']:.4f}")
        parts += [f"lr {row.get('lr', float('nan')):.3g}", f"{speed:.0f} samples/s",
                  f"elapsed {_duration(elapsed)}", f"eta {_duration(eta)}"]
        line = "  ".join(parts)
        LOGGER.info(line)
        return line

    def close(self) -> None:
        if self.file_handler is not None:
            LOGGER.removeHandler(self.file_handler)
            self.file_handler.close()
            self.file_handler = None


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: no epoch timed yet
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
