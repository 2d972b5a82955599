"""Baselines on the very split the runs used: raw pixels, PCA, LDA (Fisher) and NCA.

Images are reloaded from the data set named in a run's config and selected by the
stored /final/<split>/index, once per data config. Each baseline is fitted on the
training split and scored on the same queries by the same protocol as the runs (the run.h5
attrs eval_protocol/eval_query/eval_gallery): stratified, test queries against the projected
training split; class-disjoint, the test split projected and scored leave-one-out among
itself; query/gallery, projected queries against the projected gallery. At the
embedding dims of the grid. LDA has at most n_classes-1 dims: larger dims are capped
(the `dim` column says what was used). Results are cached on disk by data config, dims
and split indices, so re-running the report does not refit NCA.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.neighbors import NeighborhoodComponentsAnalysis
from threadpoolctl import threadpool_limits

from analysis.load import Runs, load_split_images
from analysis.metrics import compute_metrics, gallery_exclusion, protocol_of
from runner.store import atomic_write, read_attrs, read_final

MAX_INPUT_DIM = 256
"""LDA and NCA see at most this many PCA components of the pixels (the rest is noise and time)."""
NCA_MAX_SAMPLES = 600
"""NCA is O(n²) per iteration: it is fitted on a class-stratified subsample of the training split."""
NCA_MAX_ITER = 30
METHODS = ("raw", "pca", "lda", "nca")
LABELS = {"raw": "raw pixels", "pca": "PCA", "lda": "LDA (Fisher)", "nca": "NCA"}


def _features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def _stratified_subsample(labels: np.ndarray, n_max: int, seed: int = 0) -> np.ndarray:
    if len(labels) <= n_max:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # round-robin over classes keeps every class represented
    ranks = np.empty(len(labels), dtype=int)
    for c in np.unique(labels):
        members = order[labels[order] == c]
        ranks[members] = np.arange(len(members))
    return np.sort(order[np.argsort(ranks[order], kind="stable")][:n_max])


def _fit_transform(method: str, dim: int, x_tr, y_tr, x_te):
    """(train, test) embeddings of one baseline and the dim actually used."""
    if method == "raw":
        return x_tr, x_te, x_tr.shape[1]
    if method == "pca":
        d = min(dim, x_tr.shape[1], len(x_tr))
        pca = PCA(d, random_state=0).fit(x_tr)
        return pca.transform(x_tr), pca.transform(x_te), d
    if x_tr.shape[1] > MAX_INPUT_DIM:
        pre = PCA(MAX_INPUT_DIM, random_state=0).fit(x_tr)
        x_tr, x_te = pre.transform(x_tr), pre.transform(x_te)
    if method == "lda":
        d = min(dim, len(np.unique(y_tr)) - 1, x_tr.shape[1])
        lda = LinearDiscriminantAnalysis(n_components=d).fit(x_tr, y_tr)
        return lda.transform(x_tr), lda.transform(x_te), d
    d = min(dim, x_tr.shape[1])
    keep = _stratified_subsample(y_tr, NCA_MAX_SAMPLES)
    nca = NeighborhoodComponentsAnalysis(n_components=d, init="pca", max_iter=NCA_MAX_ITER, random_state=0)
    nca.fit(x_tr[keep], y_tr[keep])
    return nca.transform(x_tr), nca.transform(x_te), d


def baselines_for_split(images_tr, y_tr, images_te, y_te, dims: list[int], methods=METHODS, gallery=None) -> pd.DataFrame:
    """One row per (method, effective dim): metrics of the baseline embedding, fitted on the training split.

    Args:
        images_te, y_te: the queries.
        gallery: None scores the queries against the training split (stratified); "self"
            leave-one-out among the queries (class_disjoint); (images, labels, exclude) an
            explicit gallery whose `exclude` column per query is never matched (query_gallery).
    """
    x_tr, x_q = _features(images_tr), _features(images_te)
    x_g = _features(gallery[0]) if isinstance(gallery, tuple) else x_q[:0]
    x_te = np.concatenate([x_q, x_g])
    rows, done = [], set()
    for method in methods:
        for dim in (dims if method != "raw" else [x_tr.shape[1]]):
            t0 = time.perf_counter()
            e_tr, e_te, used = _fit_transform(method, dim, x_tr, y_tr, x_te)
            e_q, e_g = e_te[:len(x_q)], e_te[len(x_q):]
            if (method, used) in done:
                continue  # LDA capped at C-1: larger dims give the same embedding
            done.add((method, used))
            note = f"capped at n_classes-1 = {used}" if method == "lda" and used < dim else ""
            rows.append({"method": method, "label": LABELS[method], "dim": used, "dim_note": note,
                         **_score(e_q, y_te, e_tr, y_tr, e_g, gallery), "fit_s": time.perf_counter() - t0})
    return pd.DataFrame(rows)


def _score(e_q, y_q, e_tr, y_tr, e_g, gallery) -> dict:
    if gallery is None:
        return compute_metrics(e_q, y_q, e_tr, y_tr)
    if isinstance(gallery, str):
        return compute_metrics(e_q, y_q)  # leave-one-out among the queries
    return compute_metrics(e_q, y_q, e_g, gallery[1], exclude=gallery[2])


def _data_key(cfg_data: dict, idx_tr: np.ndarray, idx_te: np.ndarray, dims, methods) -> str:
    h = hashlib.sha256(json.dumps([cfg_data, sorted(dims), list(methods), NCA_MAX_SAMPLES, NCA_MAX_ITER],
                                  sort_keys=True).encode())
    h.update(idx_tr.tobytes())
    h.update(idx_te.tobytes())
    return h.hexdigest()[:16]


def baseline_table(runs: Runs, methods=METHODS, cache_dir: Optional[str | Path] = None) -> pd.DataFrame:
    """Baselines for every data config (and split) of the grid, at the grid's dims."""
    with threadpool_limits(1):  # small fits: extra BLAS threads cost CPU, not time
        return _baseline_table(runs, methods, cache_dir)


def _baseline_table(runs: Runs, methods, cache_dir) -> pd.DataFrame:
    t = runs.table[runs.table.get("has_final", True) == True]  # noqa: E712 (pandas mask)
    data_cols = [c for c in runs.config_columns if c.startswith("data.")]
    if t.empty or not data_cols:
        return pd.DataFrame()
    out = []
    for _, group in t.groupby(t[data_cols].map(str).agg("|".join, axis=1), sort=True):
        first = group.iloc[0]
        cfg_data = json.loads(first["config_json"])["data"]
        dims = sorted({int(d) for d in group["embedding.dim"]}) if "embedding.dim" in group else [2]
        final, p = read_final(first["path"]), protocol_of(read_attrs(first["path"]))
        q, g = final[p["query"]], final[p["gallery"]]
        key = _data_key([cfg_data, p["name"], p["query"], p["gallery"]], final["train"]["index"],
                        np.concatenate([q["index"], g["index"]]), dims, methods)
        cached = Path(cache_dir) / f"baselines-{key}.csv" if cache_dir else None
        if cached is not None and cached.exists():
            df = pd.read_csv(cached)
        else:
            images_tr = load_split_images(cfg_data, final["train"]["index"])
            images_q = load_split_images(cfg_data, q["index"])
            gallery = None if p["gallery"] == "train" else "self" if p["gallery"] == p["query"] else (
                load_split_images(cfg_data, g["index"]), g["labels"], gallery_exclusion(q["index"], g["index"], False))
            if images_tr is None or images_q is None or (isinstance(gallery, tuple) and gallery[0] is None):
                continue
            df = baselines_for_split(images_tr, final["train"]["labels"], images_q, q["labels"], dims, methods, gallery)
            if cached is not None:  # read back by the next report: never half-written
                atomic_write(cached, df.to_csv(index=False))
        df["dim_note"] = [x if isinstance(x, str) else "" for x in df["dim_note"]]
        df["eval_protocol"] = p["name"]
        for c in data_cols:
            df[c] = first[c]
        out.append(df)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()
