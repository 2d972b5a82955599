"""Shared fixtures: tiny configs that train in seconds on CPU."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def tiny_layer(**train) -> dict:
    """A digits run small enough for CI: 2 epochs, narrow CNN, small batches."""
    return {"model": {"width": 8}, "embedding": {"dim": 8},
            "train": {"epochs": 2, "batch_size": 32, "samples_per_class": 4, "save_every": 1,
                      "num_threads": 1, **train}}


@pytest.fixture
def tiny():
    return tiny_layer()


@pytest.fixture
def subprocess_env():
    """Environment for `python -m runner...` subprocesses: the checkout first on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        env.pop(key, None)
    return env
