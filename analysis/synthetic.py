"""Synthetic run.h5 files with realistic content, for tests and for timing the report.

`python -m analysis.synthetic OUT [SPEC] [--runs N]` writes one run.h5 per config of a
grid without training: the "trained" embedding is an LDA projection of the real split's
pixels plus noise whose size depends on loss, miner, margin and seed; epoch 0 is a random
projection. Splits, indices, class names and parents are those of the real data set, so
baselines and galleries work as on real runs. Nothing here claims real accuracies.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from runner import store
from runner.config import DataConfig, RunConfig, run_id as make_run_id


@lru_cache(maxsize=4)
def _split(data_json: str):
    """(train, test) ImageSets of the real split and an LDA fitted on the training pixels."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from analysis.load import _load_source_cached
    from runner.data import split_dataset
    cfg = DataConfig(**json.loads(data_json))
    splits = split_dataset(_load_source_cached(data_json), cfg)
    x_tr = splits.train.images.flatten(1).numpy() / 255.0
    pca = PCA(min(64, x_tr.shape[1], len(x_tr) - 1), random_state=0).fit(x_tr)
    lda = LinearDiscriminantAnalysis().fit(pca.transform(x_tr), splits.train.labels.numpy())
    return splits, lambda x: lda.transform(pca.transform(x.flatten(1).numpy() / 255.0))


def _quality(cfg: RunConfig) -> float:
    """Noise level of the simulated embedding: lower is better (mining and triplet help a bit)."""
    noise = 0.9 if "contrastive" in cfg.loss.name.lower() else 0.75
    noise *= 0.85 if cfg.miner.name else 1.0
    noise *= 1.0 + 0.5 * abs((cfg.loss.margin or 0.2) - 0.3)
    return noise * (1.6 if cfg.embedding.dim <= 2 else 1.0)


def _embed(z: np.ndarray, dim: int, noise: float, seed: int, split_seed: int, normalize: bool) -> np.ndarray:
    """First `dim` LDA directions (padded with noise), one rotation per run, noise per split."""
    rng = np.random.default_rng([seed, split_seed])
    if dim <= z.shape[1]:
        out = z[:, :dim]
    else:
        out = np.concatenate([z, 0.3 * rng.normal(size=(len(z), dim - z.shape[1]))], axis=1)
        out = out @ np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))[0]
    out = out + noise * rng.normal(size=out.shape)
    if normalize:
        out = out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)
    return out.astype(np.float32)


def _steps(cfg: RunConfig, n_steps: int, rng: np.random.Generator) -> dict:
    t = np.arange(n_steps) / max(n_steps - 1, 1)
    margin = cfg.loss.margin if cfg.loss.margin is not None else 0.2
    mined = cfg.miner.name is not None
    scale = 0.35 if "contrastive" in cfg.loss.name.lower() else margin + 0.05
    loss = scale * (0.25 + 0.75 * np.exp(-4 * t)) * (1.3 if mined else 1.0) + 0.01 * rng.normal(size=n_steps)
    active = (0.55 if mined else 0.3) * np.exp(-2.5 * t) + 0.05 + 0.01 * rng.normal(size=n_steps)
    return {"epoch": np.floor(t * cfg.train.epochs).clip(0, cfg.train.epochs - 1) + 1, "step": np.arange(n_steps),
            "loss": loss.clip(0), "active_fraction": active.clip(0, 1),
            "pos_distance": 0.95 - 0.45 * (1 - np.exp(-3 * t)) + 0.02 * rng.normal(size=n_steps),
            "neg_distance": 1.15 + 0.2 * (1 - np.exp(-3 * t)) + 0.02 * rng.normal(size=n_steps),
            "embedding_norm": 3 + t, "lr": cfg.train.lr * 0.5 * (1 + np.cos(np.pi * t))}


def synthetic_record(cfg: RunConfig, status: str = "completed", stop_epoch: Optional[int] = None) -> store.RunRecord:
    """A RunRecord as runner.train would write it (status completed, stopped or failed)."""
    from analysis.metrics import compute_metrics
    rng = np.random.default_rng([cfg.seed, cfg.embedding.dim, len(cfg.loss.name), int(100 * (cfg.loss.margin or 0))])
    splits, project = _split(json.dumps(cfg.to_dict()["data"], sort_keys=True))
    epochs = stop_epoch if status in ("stopped", "failed") and stop_epoch else cfg.train.epochs
    steps_per_epoch = max(1, len(splits.train) // cfg.train.batch_size)
    rec = store.RunRecord(run_id=make_run_id(cfg), config=cfg.to_dict(), status=status)
    rec.steps = {k: v[:epochs * steps_per_epoch] for k, v in _steps(cfg, cfg.train.epochs * steps_per_epoch, rng).items()}
    rec.data = {"class_names": splits.train.class_names, "family": splits.train.meta.get("family", cfg.data.name),
                "image_shape": list(splits.train.images.shape[1:])}
    if splits.train.parents is not None:
        rec.data["parents"] = splits.train.parents
    started = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc).isoformat()
    rec.attrs = {"seed": cfg.seed, "start_time": started, "end_time": started, "host": "synthetic",
                 "git_rev": "synthetic", "versions": {"synthetic": 1}, "world_size": 1, "launcher": "synthetic"}
    if status == "failed":
        rec.attrs.update(error="NonFiniteLoss: non-finite loss nan", failed_epoch=epochs, failed_step=len(rec.steps["loss"]))
        return rec
    noise = _quality(cfg) * (1 + 0.08 * rng.normal()) * (1.3 if status == "stopped" else 1.0)
    w0 = rng.normal(size=(splits.train.images[0].numel(), cfg.embedding.dim))  # the untrained network
    snap = {}
    for s in ("train", "test"):
        part = getattr(splits, s)
        final = _embed(project(part.images), cfg.embedding.dim, noise, cfg.seed, len(s), cfg.embedding.normalize)
        raw = (part.images.flatten(1).numpy() / 255.0) @ w0
        untrained = raw / np.linalg.norm(raw, axis=1, keepdims=True).clip(1e-12) if cfg.embedding.normalize else raw
        snap[s] = (untrained.astype(np.float32), final)
        rec.final[s] = {"embeddings": final, "labels": part.labels.numpy(), "index": part.index.numpy()}
    saved = sorted({0, epochs, *range(cfg.train.save_every, epochs + 1, cfg.train.save_every)})
    rec.epochs = {e: {s: _blend(*snap[s], e / max(epochs, 1)) if e < epochs else snap[s][1] for s in snap} for e in saved}
    metrics = compute_metrics(final_of(rec, "test"), rec.final["test"]["labels"], final_of(rec, "train"),
                              rec.final["train"]["labels"])
    chance = 1.0 / len(splits.train.class_names)
    rec.epoch_table = [{"epoch": e, "train_loss": float(np.mean(rec.steps["loss"][rec.steps["epoch"] == e])) if e else np.nan,
                        "train_s": 0.5 if e else 0.0, "eval_s": 0.1,
                        **{k: chance + (v - chance) * (1 - np.exp(-4 * e / max(epochs, 1))) / (1 - np.exp(-4))
                           for k, v in metrics.items()}} for e in range(epochs + 1)]
    rec.attrs.update(metrics=metrics, train_time_s=0.5 * epochs, wall_time_s=0.6 * epochs,
                     samples_per_s=1000.0, epochs_run=epochs, status_reason="asha" if status == "stopped" else "")
    return rec


def final_of(rec: store.RunRecord, split: str) -> np.ndarray:
    return rec.final[split]["embeddings"]


def _blend(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    out = (1 - t) * a + t * b
    return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def grid_configs(spec: str | Path = "jobs/exercise.yaml", sets: tuple = ()) -> list[RunConfig]:
    from runner.spec import expand_grid, load_spec
    return expand_grid(load_spec(spec, list(sets)))


def write_grid(out: str | Path, configs: list[RunConfig], statuses: Optional[dict] = None) -> list[Path]:
    """One run.h5 per config under out/runs/<run_id>/; statuses maps a config's position to a status."""
    paths = []
    for i, cfg in enumerate(configs):
        status = (statuses or {}).get(i, "completed")
        rec = synthetic_record(cfg, status, stop_epoch=max(1, cfg.train.epochs // 3))
        paths.append(store.write_run(store.run_path(out, rec.run_id), rec))
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("out", help="results directory to write runs/<run_id>/run.h5 into")
    p.add_argument("spec", nargs="?", default="jobs/exercise.yaml", help="grid spec (default jobs/exercise.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--runs", type=int, default=None, help="repeat the grid with more seeds up to this many runs")
    args = p.parse_args(argv)
    configs = grid_configs(args.spec, tuple(args.set))
    if args.runs and args.runs > len(configs):
        import dataclasses
        n_seeds = -(-args.runs // len(configs))
        configs = [dataclasses.replace(c, seed=c.seed + 1000 * k) for k in range(n_seeds) for c in configs]
    paths = write_grid(args.out, configs[:args.runs] if args.runs else configs)
    print(f"wrote {len(paths)} synthetic runs under {args.out}/runs/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
