"""Exact retrieval, classification and clustering metrics of queries against references.

kNN and NCM accuracy, P@1, R-precision, MAP@R, Recall@K, and NMI/AMI of k-means on the
queries. The neighbour search is runner.training.knn's (blocked, exact); definitions follow
scikit-learn (kNN, NCM, KMeans, NMI, AMI) and pytorch-metric-learning's AccuracyCalculator
(P@1, R-precision, MAP@R with k="max_bin_count"); tests/test_evaluate.py checks both.
docs/evaluation.md gives every formula; runner.training.protocols says which split is the
query and which the reference.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from runner.training import knn

RECALL_AT = (1, 2, 4, 8)
"""Default K of Recall@K, as reported on CUB-200, Cars196 and SOP."""
KMEANS_N_INIT = 3
"""k-means restarts behind NMI/AMI (the best inertia wins): fixed, so a run.h5 can be recomputed."""
KMEANS_SEED = 0
"""random_state of that k-means: the same embeddings always give the same NMI/AMI."""


def knn_predict(neighbor_labels: torch.Tensor, k: int) -> torch.Tensor:
    """Majority label among the first k neighbours; ties go to the smallest label, as in scikit-learn."""
    labels = neighbor_labels[:, :k]
    if k == 1:
        return labels[:, 0]
    classes, inverse = torch.unique(labels, return_inverse=True)
    votes = torch.zeros(len(labels), len(classes), dtype=torch.long, device=labels.device)
    votes.scatter_add_(1, inverse, torch.ones_like(inverse))
    return classes[votes.argmax(1)]  # argmax returns the first maximum, classes are sorted


def nearest_class_mean(query_emb, ref_emb, ref_labels, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Label of the closest reference class mean for each query (Euclidean, float64 like NearestCentroid).

    Args:
        exclude: per query, a reference column (-1 for none) left out of its class mean: the
            query's own entry in leave-one-out NCM. A class it leaves empty is never predicted.
    """
    query_emb, ref_emb, ref_labels = _as_tensor(query_emb), _as_tensor(ref_emb), _as_tensor(ref_labels)
    classes, inverse = torch.unique(ref_labels, return_inverse=True)
    sums = torch.zeros(len(classes), ref_emb.shape[1], dtype=torch.float64, device=ref_emb.device)
    sums.index_add_(0, inverse, ref_emb.double())
    counts = torch.bincount(inverse, minlength=len(classes))
    means = sums / counts[:, None]
    block_size = max(1, knn.BLOCK_BYTES // (16 * (len(classes) + ref_emb.shape[1])))  # float64 rows
    preds = []
    for s in range(0, len(query_emb), block_size):
        q = query_emb[s : s + block_size].double()
        d = torch.cdist(q, means)
        if exclude is not None:
            rows = torch.nonzero(exclude[s : s + block_size] >= 0).flatten()
            cols = exclude[s : s + block_size][rows]
            c, n = inverse[cols], counts[inverse[cols]]
            left = (sums[c] - ref_emb[cols].double()) / (n - 1).clamp_min(1)[:, None]
            own = torch.linalg.vector_norm(q[rows] - left, dim=1)
            d[rows, c] = torch.where(n > 1, own, torch.full_like(own, math.inf))
        preds.append(classes[d.argmin(1)])
    return torch.cat(preds) if preds else classes[:0]


def cluster_scores(emb, labels, n_init: int = KMEANS_N_INIT, seed: int = KMEANS_SEED) -> dict[str, float]:
    """NMI and AMI between the labels and k-means clusters of emb, k = number of labels."""
    x = _as_tensor(emb).detach().cpu().float().numpy()  # float32 whatever came in: one result per embedding
    y = _as_tensor(labels).cpu().numpy()
    if len(y) == 0:
        return {"nmi": math.nan, "ami": math.nan}
    # scikit-learn imported here: ~2 s that every launcher would pay at start-up otherwise
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
    kmeans = KMeans(n_clusters=len(np.unique(y)), n_init=n_init, random_state=seed)
    # as many threads as torch uses (numba does the same): OpenMP's default oversubscribes shared nodes
    with threadpool_limits(torch.get_num_threads()), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # collapsed embeddings: fewer distinct clusters
        clusters = kmeans.fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(y, clusters)),
            "ami": float(adjusted_mutual_info_score(y, clusters))}


def _retrieval_sums(nn_labels: torch.Tensor, labels: torch.Tensor, r: torch.Tensor,
                    recall_at: tuple[int, ...]) -> torch.Tensor:
    """Sums of P@1, R-precision, AP@R and Recall@K over queries with R > 0 (PML drops the others)."""
    valid = r > 0
    nn_labels, labels, r = nn_labels[valid], labels[valid], r[valid]
    if len(r) == 0:
        return torch.zeros(3 + len(recall_at), dtype=torch.float64, device=r.device)
    same = nn_labels == labels[:, None]
    width = int(r.max())  # columns past the largest R of the block never count
    rank = torch.arange(1, width + 1, device=r.device)
    hit = same[:, :width] & (rank <= r[:, None])
    # AP@R = 1/R * sum over hits in the top R of (hits so far / rank); misses inside R count as 0
    ap = (hit.cumsum(1) / rank.double()).mul_(hit).sum(1) / r
    p1 = same[:, 0].sum()
    recall = [same[:, :k].any(1).sum().double() for k in recall_at]  # a relevant item in the first K
    return torch.stack([p1.double(), (hit.sum(1) / r.double()).sum(), ap.sum(), *recall])


def _as_tensor(x, device=None) -> torch.Tensor:
    """A torch tensor on device from a tensor, numpy array or sequence."""
    x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    return x.to(device) if device is not None else x


def compute_metrics(
    query_emb,
    query_labels,
    ref_emb=None,
    ref_labels=None,
    *,
    ks: Sequence[int] = (1, 5),
    recall_at: Sequence[int] = RECALL_AT,
    exclude=None,
    ncm_leave_out: bool = False,
    clustering: bool = True,
    block_size: Optional[int] = None,
    device=None,
) -> dict[str, float]:
    """knn<k>, ncm, p_at_1, r_precision, map_at_r, recall_at_<K> (and nmi, ami) of queries against references.

    Args:
        ref_emb: None makes the queries their own references, each query's own index excluded.
        exclude: per query, one reference column never matched with it (-1 for none), e.g. the
            same image in a query/gallery split; None excludes nothing (or, with ref_emb None,
            each query's own index).
        ncm_leave_out: leave each query's excluded reference out of its class mean as well
            (leave-one-out NCM); False compares with the means of all references.
        clustering: add nmi and ami of k-means on the queries (cluster_scores).
        block_size: queries per block; None picks it from knn.BLOCK_BYTES.
        device: where to compute; None keeps the query's device.
    """
    query_emb = _as_tensor(query_emb, device)
    device = query_emb.device
    query_labels = _as_tensor(query_labels, device).long()
    if ref_emb is None:
        ref_emb, ref_labels = query_emb, query_labels
        exclude = torch.arange(len(query_emb), device=device) if exclude is None else exclude
    else:
        ref_emb, ref_labels = _as_tensor(ref_emb, device), _as_tensor(ref_labels, device).long()
    own = None if exclude is None else _as_tensor(exclude, device).long()
    if len(query_emb) != len(query_labels) or len(ref_emb) != len(ref_labels):
        raise ValueError("embeddings and labels must have the same length")
    if own is not None and (own.shape != query_labels.shape or bool(((own < -1) | (own >= len(ref_emb))).any())):
        raise ValueError("exclude must hold one reference column (or -1) per query")
    available = len(ref_emb) - int(own is not None and bool((own >= 0).any()))
    for name, values in (("ks", ks), ("recall_at", recall_at)):
        if values and max(values) > available:
            raise ValueError(f"{name}={tuple(values)} needs more than the {available} references available")
    with torch.inference_mode():
        found = _compute(query_emb, query_labels, ref_emb, ref_labels, own, tuple(ks), tuple(recall_at), block_size)
        ncm = nearest_class_mean(query_emb, ref_emb, ref_labels, own if ncm_leave_out else None) == query_labels
    out = {**{f"knn{k}": found.pop(f"knn{k}") for k in ks}, "ncm": ncm.double().mean().item(), **found}
    if clustering:
        out.update(cluster_scores(query_emb, query_labels))
    return out


def _compute(query_emb, query_labels, ref_emb, ref_labels, own, ks, recall_at, block_size) -> dict[str, float]:
    """kNN and retrieval metrics of compute_metrics, on tensors already checked and moved to one device."""
    device = query_emb.device
    _, inverse = torch.unique(torch.cat([query_labels, ref_labels]), return_inverse=True)
    q_labels, r_labels = inverse[: len(query_labels)], inverse[len(query_labels) :]
    r = torch.bincount(r_labels, minlength=int(inverse.max()) + 1)[q_labels]
    if own is not None:  # the excluded reference is no relevant item (it has the query's label when it is itself)
        r -= ((own >= 0) & (r_labels[own.clamp_min(0)] == q_labels)).long()
    k = max(max(ks), max(recall_at, default=1), int(r.max()) if len(r) else 0)
    filtered = knn.use_filter(ref_emb, k)
    # float64 where it costs nothing (small reference sets): float32 rounding (~1e-7 of the
    # norms) can swap near-tied neighbours, and kNN then differs from an exact float64 search
    refs = knn.Refs.build(ref_emb, torch.float64 if len(ref_emb) < knn.MIN_REFS_TO_FILTER else torch.float32)
    block_size = block_size or knn.block_size(refs.n, k, filtered)
    topk = knn.topk_filtered if filtered else knn.topk_direct
    query = refs.lift(query_emb)
    sums = torch.zeros(len(ks) + 3 + len(recall_at), dtype=torch.float64, device=device)
    for s in range(0, len(query), block_size):
        e = min(s + block_size, len(query))
        nn_labels = r_labels[topk(query[s:e], refs, k, None if own is None else own[s:e])]
        knn_hits = [(knn_predict(nn_labels, kk) == q_labels[s:e]).sum() for kk in ks]
        sums += torch.cat([torch.stack(knn_hits).double(), _retrieval_sums(nn_labels, q_labels[s:e], r[s:e], recall_at)])
    n_valid = int((r > 0).sum())
    out = {f"knn{kk}": (sums[i] / len(query)).item() for i, kk in enumerate(ks)}
    names = ("p_at_1", "r_precision", "map_at_r", *(f"recall_at_{kk}" for kk in recall_at))
    for name, total in zip(names, sums[len(ks) :]):
        out[name] = (total / n_valid).item() if n_valid else math.nan
    return out
