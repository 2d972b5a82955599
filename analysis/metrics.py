"""Metrics of stored embeddings by the run's recorded protocol, recomputed with scikit-learn and numpy.

Exact, in float64 and independent of runner.training: kNN from scikit-learn's
KNeighborsClassifier, NCM from NearestCentroid (or its leave-one-out form), P@1,
R-precision, MAP@R and Recall@K as pytorch-metric-learning defines them (R = gallery
entries sharing the query's label, the excluded one not counted; queries without any
are left out of the means), NMI/AMI of scikit-learn's KMeans with k = number of query
classes. The protocol (docs/evaluation.md) comes from the run.h5 attributes:

    stratified      /final/test queries against /final/train
    class_disjoint  leave-one-out within /final/test (each query against all the others)
    query_gallery   /final/query against /final/gallery, a query never matched with its own image

Training computes the same in float32; near-equal distances can rank differently there,
so the tables use this recomputation and load.py reports any difference to the stored values.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

CHUNK = 256
"""Queries per block of the distance matrix (memory: CHUNK × n_references float64)."""
RECALL_AT = (1, 2, 4, 8)
"""K of recall_at_<K> when a run.h5 records none (runner's default eval.recall_at)."""
KMEANS = {"n_init": 3, "seed": 0}
"""k-means settings behind NMI/AMI when a run.h5 records none (attrs eval_kmeans)."""
PROTOCOL_NOTES = {"stratified": "stratified: test queries against the training gallery",
                  "class_disjoint": "class-disjoint: leave-one-out among unseen classes",
                  "query_gallery": "query/gallery: queries against the gallery split, no self-matches"}
"""One line per protocol for slides and tables."""


def protocol_of(attrs: dict) -> dict:
    """name, query, gallery (splits under /final), exclude (self, same_index), recall_at, kmeans of a run.

    Files written before eval_protocol existed were scored test against train."""
    name = attrs.get("eval_protocol") or "stratified"
    query = attrs.get("eval_query") or "test"
    gallery = attrs.get("eval_gallery") or ("test" if name == "class_disjoint" else "train")
    exclude = attrs.get("eval_exclude") or ("self" if query == gallery else "same_index")
    recall_at = tuple(int(k) for k in (attrs.get("eval_recall_at") or RECALL_AT))
    kmeans = {**KMEANS, **(attrs.get("eval_kmeans") or {})}
    return {"name": name, "query": query, "gallery": gallery, "exclude": exclude,
            "recall_at": recall_at, "kmeans": kmeans}


def gallery_exclusion(query_index, gallery_index, self_match: bool) -> Optional[np.ndarray]:
    """Per query, the gallery column never matched with it (-1: none); None when nothing is excluded."""
    if self_match:
        return np.arange(len(query_index))
    pos = {int(i): c for c, i in enumerate(np.asarray(gallery_index).tolist())}
    cols = np.asarray([pos.get(int(i), -1) for i in np.asarray(query_index).tolist()], dtype=np.int64)
    return cols if (cols >= 0).any() else None


def run_metrics(final: dict, attrs: dict) -> dict:
    """Every metric of a run (runner.store.read_final's dict, read_attrs' dict) by its recorded protocol."""
    p = protocol_of(attrs)
    q, g = final[p["query"]], final[p["gallery"]]
    same = p["query"] == p["gallery"]
    exclude = gallery_exclusion(q.get("index", ()), g.get("index", ()), same) if same or "index" in q else None
    return compute_metrics(q["embeddings"], q["labels"], None if same else g["embeddings"],
                           None if same else g["labels"], exclude=None if same else exclude,
                           recall_at=p["recall_at"], kmeans=p["kmeans"])


def compute_metrics(query_emb, query_labels, gallery_emb=None, gallery_labels=None, *, exclude=None,
                    recall_at: Sequence[int] = RECALL_AT, kmeans: Optional[dict] = None,
                    clustering: bool = True) -> dict:
    """knn1, knn5, ncm, p_at_1, r_precision, map_at_r, recall_at_<K>, nmi, ami as floats.

    Args:
        gallery_emb: None is leave-one-out within the queries (class_disjoint).
        exclude: per query, one gallery column never matched with it (-1: none), e.g. the same
            image in a query/gallery split; the NCM then leaves it out of its class mean too.
    """
    q, ql = np.asarray(query_emb, dtype=np.float64), np.asarray(query_labels)
    if gallery_emb is None:
        r, rl, exclude = q, ql, np.arange(len(q))
    else:
        r, rl = np.asarray(gallery_emb, dtype=np.float64), np.asarray(gallery_labels)
        exclude = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    available = len(r) - int(exclude is not None and (exclude >= 0).any())
    out = {"knn1": knn_accuracy(q, ql, r, rl, 1, exclude), "knn5": knn_accuracy(q, ql, r, rl, min(5, available), exclude)}
    out["ncm"] = ncm_accuracy(q, ql, r, rl, exclude)
    out.update(retrieval_metrics(q, ql, r, rl, exclude, recall_at))
    if clustering:
        out.update(cluster_scores(query_emb, ql, **(kmeans or KMEANS)))
    return out


def reference_metrics(test_emb, test_labels, train_emb, train_labels) -> dict:
    """Stratified metrics: test queries against the training references."""
    return compute_metrics(test_emb, test_labels, train_emb, train_labels)


def knn_accuracy(q, ql, r, rl, k: int, exclude=None) -> float:
    """Accuracy of the k-NN majority vote (ties to the smallest label, as scikit-learn); exclude as in compute_metrics."""
    clf = KNeighborsClassifier(n_neighbors=k).fit(r, rl)
    if exclude is None or not (exclude >= 0).any():
        return float(clf.score(q, ql))
    _, nn = clf.kneighbors(q, n_neighbors=min(k + 1, len(r)))
    keep = nn != exclude[:, None]
    keep[keep.sum(1) > k, -1] = False  # the excluded entry was not among the k + 1: drop the farthest
    nn_labels = rl[nn[keep].reshape(len(q), k)] if k > 0 else rl[:0]
    classes, inverse = np.unique(nn_labels, return_inverse=True)
    votes = np.zeros((len(q), len(classes)), np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(q)), k), inverse.ravel()), 1)
    return float(np.mean(classes[votes.argmax(1)] == ql))


def ncm_accuracy(q, ql, r, rl, exclude=None) -> float:
    """Nearest class mean accuracy; with exclude, each query's excluded entry leaves its class mean."""
    if len(np.unique(rl)) < 2:
        return float("nan")
    if exclude is None or not (exclude >= 0).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant features (raw-pixel borders) are fine for the centroid rule
            return float(NearestCentroid().fit(r, rl).score(q, ql))
    classes, inverse = np.unique(rl, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    sums = np.zeros((len(classes), r.shape[1]))
    np.add.at(sums, inverse, r)
    means = sums / counts[:, None]
    d = (q ** 2).sum(1)[:, None] - 2.0 * q @ means.T + (means ** 2).sum(1)[None, :]
    rows = np.flatnonzero(exclude >= 0)
    c = inverse[exclude[rows]]
    n = counts[c]
    left = (sums[c] - r[exclude[rows]]) / np.maximum(n - 1, 1)[:, None]
    d[rows, c] = np.where(n > 1, ((q[rows] - left) ** 2).sum(1), np.inf)
    return float(np.mean(classes[d.argmin(1)] == ql))


def retrieval_metrics(q, ql, r, rl, exclude=None, recall_at: Sequence[int] = RECALL_AT) -> dict:
    """P@1, R-precision, MAP@R and Recall@K (R = gallery entries sharing the query's label, the excluded one not)."""
    counts = {c: int(n) for c, n in zip(*np.unique(rl, return_counts=True))}
    width = max(max(counts.values()), max(recall_at, default=1))
    p1, rprec, mapr, recall = [], [], [], []
    r_sq = (r ** 2).sum(axis=1)
    for start in range(0, len(q), CHUNK):  # float64: |q|² - 2q·r + |r|² resolves tiny distances
        block = q[start:start + CHUNK]
        d = (block ** 2).sum(axis=1)[:, None] - 2.0 * block @ r.T + r_sq[None, :]
        if exclude is not None:
            rows = np.flatnonzero(exclude[start:start + CHUNK] >= 0)
            d[rows, exclude[start:start + CHUNK][rows]] = np.inf
        order = np.argsort(d, axis=1, kind="stable")[:, :width]
        for i, (labels, y) in enumerate(zip(rl[order], ql[start:start + CHUNK])):
            own = -1 if exclude is None else exclude[start + i]
            big_r = counts.get(int(y), 0) - int(own >= 0 and rl[own] == y)
            if big_r <= 0:  # no gallery entry shares the label: left out of the means (as PML)
                continue
            labels = labels[:len(r) - int(own >= 0)]  # the excluded column sorts last
            hit = labels[:big_r] == y
            p1.append(float(labels[0] == y))
            rprec.append(hit.mean())
            mapr.append(float((np.cumsum(hit) / np.arange(1, big_r + 1) * hit).sum() / big_r))
            recall.append([bool((labels[:k] == y).any()) for k in recall_at])
    mean = (lambda v: float(np.mean(v)) if len(v) else float("nan"))
    out = {"p_at_1": mean(p1), "r_precision": mean(rprec), "map_at_r": mean(mapr)}
    rec = np.asarray(recall, dtype=np.float64).reshape(-1, len(recall_at))
    out.update({f"recall_at_{k}": mean(rec[:, j]) for j, k in enumerate(recall_at)})
    return out


def cluster_scores(emb, labels, n_init: int = KMEANS["n_init"], seed: int = KMEANS["seed"]) -> dict:
    """NMI and AMI between the labels and scikit-learn k-means clusters of emb (float32), k = number of labels."""
    x, y = np.asarray(emb, dtype=np.float32), np.asarray(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapsed embeddings: fewer distinct clusters than k
        clusters = KMeans(n_clusters=len(np.unique(y)), n_init=n_init, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(y, clusters)),
            "ami": float(adjusted_mutual_info_score(y, clusters))}


def source() -> str:
    return "float64, scikit-learn kNN/NCM/KMeans, by the recorded protocol"
