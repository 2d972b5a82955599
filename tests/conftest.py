"""Shared fixtures: tiny configs that train in seconds on CPU."""

import os
import subprocess
import sys
import time
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


def start_train_until_checkpoint(out, cfg, sets: list, env: dict):
    """`python -m runner.train --out OUT --set ...` started, returned once cfg's first checkpoint exists.

    Returns (process, argv) so a test can signal it, then run the same command again.
    """
    from runner import store
    from runner.config import run_id
    args = [PYTHON, "-m", "runner.train", "--out", str(out)] + [x for s in sets for x in ("--set", s)]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = store.run_dir(out, run_id(cfg)) / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint"
    return proc, args
