"""Retrieval/classification metrics of stored embeddings: test queries vs train references.

Exact, in float64: kNN and NCM from scikit-learn (KNeighborsClassifier, NearestCentroid),
P@1, R-precision and MAP@R as pytorch-metric-learning defines them (R = references
sharing the query's label; queries without any are left out of the means, as in
runner.training.evaluate). That module computes the same in float32 during training; on
low-dimensional normalised embeddings (d = 2) near-equal distances can rank differently
there, so the tables use this exact recomputation and load.py reports any difference to
the stored values.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

CHUNK = 256
"""Queries per block of the distance matrix (memory: CHUNK × n_references float64)."""


def compute_metrics(test_emb, test_labels, train_emb, train_labels) -> dict:
    """knn1, knn5, ncm, p_at_1, r_precision, map_at_r as floats."""
    return reference_metrics(test_emb, test_labels, train_emb, train_labels)


def reference_metrics(test_emb, test_labels, train_emb, train_labels) -> dict:
    """The metrics from scikit-learn and plain numpy (Euclidean distances)."""
    q, ql = np.asarray(test_emb, dtype=np.float64), np.asarray(test_labels)
    r, rl = np.asarray(train_emb, dtype=np.float64), np.asarray(train_labels)
    out = {"knn1": knn_accuracy(q, ql, r, rl, 1), "knn5": knn_accuracy(q, ql, r, rl, min(5, len(r)))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant features (raw-pixel borders) are fine for the centroid rule
        out["ncm"] = float(NearestCentroid().fit(r, rl).score(q, ql)) if len(np.unique(rl)) > 1 else float("nan")
    out.update(retrieval_metrics(q, ql, r, rl))
    return out


def knn_accuracy(q, ql, r, rl, k: int) -> float:
    return float(KNeighborsClassifier(n_neighbors=k).fit(r, rl).score(q, ql))


def retrieval_metrics(q, ql, r, rl) -> dict:
    """P@1, R-precision and MAP@R (R = number of references sharing the query's label)."""
    counts = {c: int(n) for c, n in zip(*np.unique(rl, return_counts=True))}
    max_r = max(counts.values())
    p1, rprec, mapr = [], [], []
    r_sq = (r ** 2).sum(axis=1)
    for start in range(0, len(q), CHUNK):  # float64: |q|² - 2q·r + |r|² resolves tiny distances
        block = q[start:start + CHUNK]
        d = (block ** 2).sum(axis=1)[:, None] - 2.0 * block @ r.T + r_sq[None, :]
        order = np.argsort(d, axis=1, kind="stable")[:, :max_r]
        for labels, y in zip(rl[order], ql[start:start + CHUNK]):
            big_r = counts.get(int(y), 0)
            if big_r == 0:  # no reference shares the label: left out of the means (as runner.training.evaluate)
                continue
            hit = labels[:big_r] == y
            p1.append(float(labels[0] == y))
            rprec.append(hit.mean())
            mapr.append(float((np.cumsum(hit) / np.arange(1, big_r + 1) * hit).sum() / big_r))
    mean = (lambda v: float(np.mean(v)) if v else float("nan"))
    return {"p_at_1": mean(p1), "r_precision": mean(rprec), "map_at_r": mean(mapr)}


def source() -> str:
    return "float64, scikit-learn kNN/NCM"
