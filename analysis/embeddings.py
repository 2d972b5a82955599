"""2-D views of stored embeddings: t-SNE, UMAP, or the embedding itself when d = 2.

Train and test embeddings of one epoch are projected together (same map, so the panels
are comparable) and drawn in separate panels, one colour per class. Large splits are
subsampled per class to at most MAX_POINTS points in all (the slides state the cap). t-SNE
runs on every core (scikit-learn's n_jobs for the neighbours and its OpenMP gradient), also
inside a report that limits BLAS to one thread. umap is imported on first use (its import
and JIT compilation take seconds).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Optional

import matplotlib
import matplotlib.patheffects as pe
import numpy as np
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from runner.store import file_stamp
from analysis.load import load_data_info
from runner.store import atomic_write, read_epoch, stored_epochs

MAX_POINTS = 2000
"""Points per projection (train + test); t-SNE and UMAP time grows fast beyond this."""


def subsample(labels: np.ndarray, n_max: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices, at most n_max, every class kept in proportion."""
    n = len(labels)
    if n <= n_max:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keep.append(rng.choice(rows, size=max(1, int(round(n_max * len(rows) / n))), replace=False))
    return np.sort(np.concatenate(keep))[:n_max] if sum(map(len, keep)) > n_max else np.sort(np.concatenate(keep))


def cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a SLURM allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def project(emb: np.ndarray, method: str, seed: int = 0, threads: int = 0) -> np.ndarray:
    """N×2 coordinates: the embedding itself for d <= 2, else t-SNE or UMAP (t-SNE on `threads` cores, 0: all)."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.shape[1] <= 2:
        return np.pad(emb, ((0, 0), (0, 2 - emb.shape[1])))
    if method == "tsne":
        perplexity = float(min(30.0, max(2.0, (len(emb) - 1) / 3.5)))
        n = threads or cores()
        with threadpool_limits(n, user_api="openmp"):  # the Barnes-Hut gradient is OpenMP: lift the report's limit
            return TSNE(2, init="pca", perplexity=perplexity, max_iter=500, random_state=seed,
                        n_jobs=n).fit_transform(emb)
    if method == "umap":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs=1 with a random_state, numba notices
            import umap  # optional extra (umap-learn); importing it costs seconds of numba set-up
            return umap.UMAP(n_neighbors=min(15, len(emb) - 1), min_dist=0.1, random_state=seed,
                             n_jobs=1).fit_transform(emb)
    raise ValueError(f"unknown projection {method!r}: tsne or umap")


PROJECTION_VERSION = 2
"""Part of the cache key: bump it when project() changes what it computes."""


def project_run(path: str, method: str, epochs=None, max_points: int = MAX_POINTS, seed: int = 0,
                cache_dir: Optional[Path] = None, threads: int = 0) -> dict:
    """{epoch: {"train": (xy, labels), "test": (xy, labels)}} for the first and last stored epochs.

    With cache_dir, each epoch's projection is kept in cache_dir/projections/ under
    (run_id, the run.h5's stamp, epoch, method, max_points, seed, PROJECTION_VERSION) and
    read back the next time without opening the run.h5 (the first and last stored epochs are
    the cached ones); a run that is rerun has another stamp, so it is projected again.
    """
    folder, key = _cache_key(path, method, max_points, seed, cache_dir)
    listing = folder / f"{key}-epochs.json" if folder is not None else None
    if epochs is None and listing is not None and listing.exists():
        epochs = json.loads(listing.read_text())  # which epochs are first and last, without opening the run.h5
    elif epochs is None:
        stored = stored_epochs(path)
        epochs = sorted({stored[0], stored[-1]}) if stored else []
        if listing is not None:
            atomic_write(listing, json.dumps(epochs))
    out = {}
    for epoch in epochs:
        cached = folder / f"{key}-e{epoch}.npz" if folder is not None else None
        if cached is not None and cached.exists():
            with np.load(cached) as z:
                out[epoch] = {split: (z[f"{split}_xy"], z[f"{split}_labels"]) for split in ("train", "test")
                              if f"{split}_xy" in z}
            continue
        out[epoch] = _project_epoch(path, epoch, method, max_points, seed, threads)
        if cached is not None:
            buf = io.BytesIO()
            np.savez(buf, **{f"{s}_{k}": v for s, (xy, lab) in out[epoch].items() for k, v in (("xy", xy), ("labels", lab))})
            atomic_write(cached, buf.getvalue())
    return out


def _cache_key(path: str, method: str, max_points: int, seed: int, cache_dir: Optional[Path]) -> tuple:
    """(cache_dir/projections or None, the file-name stem of this run's projections)."""
    stamp = hashlib.sha1(file_stamp(path).encode()).hexdigest()[:10] if cache_dir is not None else ""
    folder = Path(cache_dir) / "projections" if cache_dir is not None else None
    return folder, f"{Path(path).parent.name}-{stamp}-{method}-n{max_points}-s{seed}-v{PROJECTION_VERSION}"


def is_projected(path: str, method: str, max_points: int = MAX_POINTS, seed: int = 0,
                 cache_dir: Optional[Path] = None) -> bool:
    """Whether project_run would read every epoch from cache_dir (fit nothing)."""
    folder, key = _cache_key(path, method, max_points, seed, cache_dir)
    if folder is None or not (folder / f"{key}-epochs.json").exists():
        return False
    return all((folder / f"{key}-e{e}.npz").exists() for e in json.loads((folder / f"{key}-epochs.json").read_text()))


def warm_up(method: str) -> None:
    """Import and compile what `method` needs (UMAP: numba compiles for ~15 s per process), on 60 random points."""
    project(np.random.default_rng(0).normal(size=(60, 4)), method, threads=1)


def _project_epoch(path: str, epoch: int, method: str, max_points: int, seed: int, threads: int = 0) -> dict:
    """One epoch's train and test embeddings, subsampled per class and projected on one map."""
    snap = read_epoch(path, epoch)
    parts, labels, rows = [], {}, {}
    n_total = sum(len(s["labels"]) for s in snap.values())
    for split in ("train", "test"):
        if split not in snap:
            continue
        share = max(2, int(max_points * len(snap[split]["labels"]) / n_total))
        rows[split] = subsample(snap[split]["labels"], share, seed)
        labels[split] = snap[split]["labels"][rows[split]]
        parts.append(snap[split]["embeddings"][rows[split]])
    xy = project(np.concatenate(parts), method, seed, threads)
    start, out = 0, {}
    for split in rows:
        out[split] = (xy[start:start + len(rows[split])], labels[split])
        start += len(rows[split])
    return out


def class_colours(n: int) -> list:
    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    pool = [matplotlib.colormaps[name](i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    return pool[:n] if n <= 60 else [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def scatter(ax, xy: np.ndarray, labels: np.ndarray, class_names: list[str], point_size: float = 6.0) -> None:
    """One colour per class; class names (or ids when names are long) at the class medians."""
    colours = class_colours(len(class_names))
    ax.scatter(xy[:, 0], xy[:, 1], c=[colours[int(c) % len(colours)] for c in labels], s=point_size,
               linewidths=0, alpha=0.8, rasterized=True)
    short = max((len(n) for n in class_names), default=0) <= 3
    for c in np.unique(labels):
        mx, my = np.median(xy[labels == c], axis=0)
        ax.text(mx, my, class_names[int(c)] if short else str(int(c)), fontsize="small", fontweight="bold",
                ha="center", va="center", color=colours[int(c) % len(colours)],
                path_effects=[pe.withStroke(linewidth=2.5, foreground="white")])
    ax.set_xticks([])
    ax.set_yticks([])


def embedding_figure(fig, proj: dict, class_names: list[str], method_label: str, extra: dict | None = None):
    """Rows: epoch 0 and final; columns: train, test (+ an optional extra column, e.g. a d=2 run)."""
    epochs = sorted(proj)
    n_cols = 2 + (1 if extra else 0)
    axes = fig.subplots(len(epochs), n_cols, squeeze=False)
    for r, epoch in enumerate(epochs):
        for c, split in enumerate(("train", "test")):
            if split in proj[epoch]:
                xy, labels = proj[epoch][split]
                scatter(axes[r, c], xy, labels, class_names)
            axes[r, c].set_title(f"{method_label} · {split} · epoch {epoch}" + (" (untrained)" if epoch == 0 else " (final)"),
                                 fontsize="medium")
    if extra:
        title, proj2 = extra["title"], extra["proj"]
        for r, epoch in enumerate(sorted(proj2)[:len(epochs)]):
            xy, labels = proj2[epoch]["test"]
            scatter(axes[r, -1], xy, labels, class_names)
            axes[r, -1].set_aspect("equal", adjustable="datalim")
            axes[r, -1].set_title(f"{title} · test · epoch {epoch}", fontsize="medium")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.92, wspace=0.05, hspace=0.15)
    return axes


def class_names_of(path: str) -> list[str]:
    info = load_data_info(path)
    if info["class_names"]:
        return info["class_names"]
    snap = read_epoch(path, stored_epochs(path)[-1])
    return [str(i) for i in range(int(max(s["labels"].max() for s in snap.values())) + 1)]
