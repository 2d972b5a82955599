"""run.h5 files written without training, for tests and benchmarks of status and the catalog."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from runner import store

RUNS_EACH = 15
"""Runs each `writer` process writes."""
LOSSES = ("TripletMarginLoss", "ContrastiveLoss", "MultiSimilarityLoss", "ArcFaceLoss")


def fake_config(i: int) -> dict:
    """A small config dict that varies loss, dim and seed with i."""
    return {"loss": {"name": LOSSES[i % 4], "params": {}}, "embedding": {"dim": (8, 16, 32)[i % 3]},
            "train": {"epochs": 2}, "seed": i // 12}


def fake_run_id(i: int) -> str:
    return hashlib.sha1(f"fake{i}".encode()).hexdigest()[:12]


def write_fake_run(out: str | Path, i: int, status: str = "completed", index: bool = False) -> Path:
    """OUT/runs/<id>/run.h5 of fake run i: tiny final embeddings, metrics, times, an error when failed."""
    rid = fake_run_id(i)
    attrs = {"seed": i // 12, "host": "node01", "git_rev": "abc123", "start_time": "2026-01-01T00:00:00+00:00",
             "end_time": "2026-01-01T00:01:00+00:00", "train_time_s": 50.0 + i % 7, "wall_time_s": 60.0 + i % 7,
             "epochs_run": 2}
    rec = store.RunRecord(run_id=rid, config=fake_config(i), status=status, attrs=attrs)
    if status == "completed":
        attrs["metrics"] = {"map_at_r": 0.5 + (i % 10) / 100, "knn1": 0.9}
        rng = np.random.default_rng(i)
        for split in ("train", "test"):
            rec.final[split] = {"embeddings": rng.normal(size=(4, 2)).astype("float32"),
                                "labels": np.arange(4), "index": np.arange(4)}
    else:
        attrs["error"] = ("RuntimeError: CUDA out of memory" if i % 2 else "NonFiniteLoss: loss is nan at step 3")
    path = store.write_run(store.run_path(out, rid), rec)
    if index:
        store.index_run(path)
    return path


def writer(args: tuple) -> int:
    """One of several concurrent processes: RUNS_EACH fake runs (every fifth failed), each indexed."""
    out, w = args
    for k in range(RUNS_EACH):
        i = w * RUNS_EACH + k
        write_fake_run(out, i, "completed" if i % 5 else "failed", index=True)
    return w
