"""Exact retrieval and classification metrics of embeddings: kNN, NCM, P@1, R-precision, MAP@R.

The neighbour search is runner.training.knn's (blocked, exact).
Definitions follow scikit-learn (kNN, NCM) and pytorch-metric-learning's AccuracyCalculator
(P@1, R-precision, MAP@R with k="max_bin_count"); tests/test_evaluate.py checks both.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from runner.training import knn

def knn_predict(neighbor_labels: torch.Tensor, k: int) -> torch.Tensor:
    """Majority label among the first k neighbours; ties go to the smallest label, as in scikit-learn."""
    labels = neighbor_labels[:, :k]
    if k == 1:
        return labels[:, 0]
    classes, inverse = torch.unique(labels, return_inverse=True)
    votes = torch.zeros(len(labels), len(classes), dtype=torch.long, device=labels.device)
    votes.scatter_add_(1, inverse, torch.ones_like(inverse))
    return classes[votes.argmax(1)]  # argmax returns the first maximum, classes are sorted


def nearest_class_mean(query_emb, ref_emb, ref_labels) -> torch.Tensor:
    """Label of the closest reference class mean for each query (Euclidean, float64 like NearestCentroid)."""
    query_emb, ref_emb, ref_labels = _as_tensor(query_emb), _as_tensor(ref_emb), _as_tensor(ref_labels)
    classes, inverse = torch.unique(ref_labels, return_inverse=True)
    means = torch.zeros(len(classes), ref_emb.shape[1], dtype=torch.float64, device=ref_emb.device)
    means.index_add_(0, inverse, ref_emb.double())
    means /= torch.bincount(inverse, minlength=len(classes))[:, None]
    block_size = max(1, knn.BLOCK_BYTES // (16 * (len(classes) + ref_emb.shape[1])))  # float64 rows
    preds = [
        classes[torch.cdist(query_emb[s : s + block_size].double(), means).argmin(1)]
        for s in range(0, len(query_emb), block_size)
    ]
    return torch.cat(preds) if preds else classes[:0]


def _retrieval_sums(nn_labels: torch.Tensor, labels: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Sums of P@1, R-precision and AP@R over queries with R > 0, as in PML's AccuracyCalculator."""
    valid = r > 0  # PML drops queries whose class has no other reference
    nn_labels, labels, r = nn_labels[valid], labels[valid], r[valid]
    if len(r) == 0:
        return torch.zeros(3, dtype=torch.float64, device=r.device)
    width = int(r.max())  # columns past the largest R of the block never count
    rank = torch.arange(1, width + 1, device=r.device)
    hit = (nn_labels[:, :width] == labels[:, None]) & (rank <= r[:, None])
    # AP@R = 1/R * sum over hits in the top R of (hits so far / rank); misses inside R count as 0
    ap = (hit.cumsum(1) / rank.double()).mul_(hit).sum(1) / r
    p1 = (nn_labels[:, 0] == labels).sum()
    return torch.stack([p1.double(), (hit.sum(1) / r.double()).sum(), ap.sum()])


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
    block_size: Optional[int] = None,
    device=None,
) -> dict[str, float]:
    """kNN and NCM accuracy, P@1, R-precision and MAP@R of queries against references.

    Args:
        ref_emb: None makes the queries their own references, each query's own index excluded.
        block_size: queries per block; None picks it from knn.BLOCK_BYTES.
        device: where to compute; None keeps the query's device.
    """
    exclude = ref_emb is None
    query_emb = _as_tensor(query_emb, device)
    device = query_emb.device
    query_labels = _as_tensor(query_labels, device).long()
    ref_emb = query_emb if exclude else _as_tensor(ref_emb, device)
    ref_labels = query_labels if exclude else _as_tensor(ref_labels, device).long()
    if len(query_emb) != len(query_labels) or len(ref_emb) != len(ref_labels):
        raise ValueError("embeddings and labels must have the same length")
    if max(ks) > len(ref_emb) - exclude:
        raise ValueError(f"ks={tuple(ks)} needs more than the {len(ref_emb) - exclude} references available")
    with torch.inference_mode():
        return _compute(query_emb, query_labels, ref_emb, ref_labels, exclude, tuple(ks), block_size)


def _compute(query_emb, query_labels, ref_emb, ref_labels, exclude, ks, block_size) -> dict[str, float]:
    """Body of compute_metrics, on tensors already checked and moved to one device."""
    device = query_emb.device
    _, inverse = torch.unique(torch.cat([query_labels, ref_labels]), return_inverse=True)
    q_labels, r_labels = inverse[: len(query_labels)], inverse[len(query_labels) :]
    r = torch.bincount(r_labels, minlength=int(inverse.max()) + 1)[q_labels] - int(exclude)
    k = max(max(ks), int(r.max()) if len(r) else 0)
    filtered = knn.use_filter(ref_emb, k)
    # float64 where it costs nothing (small reference sets): float32 rounding (~1e-7 of the
    # norms) can swap near-tied neighbours, and kNN then differs from an exact float64 search
    refs = knn.Refs.build(ref_emb, torch.float64 if len(ref_emb) < knn.MIN_REFS_TO_FILTER else torch.float32)
    block_size = block_size or knn.block_size(refs.n, k, filtered)
    query = refs.lift(query_emb)
    sums = torch.zeros(len(ks) + 3, dtype=torch.float64, device=device)
    for s in range(0, len(query), block_size):
        e = min(s + block_size, len(query))
        self_cols = torch.arange(s, e, device=device) if exclude else None
        topk = knn.topk_filtered if filtered else knn.topk_direct
        nn_labels = r_labels[topk(query[s:e], refs, k, self_cols)]
        knn_hits = [(knn_predict(nn_labels, kk) == q_labels[s:e]).sum() for kk in ks]
        sums += torch.cat([torch.stack(knn_hits).double(), _retrieval_sums(nn_labels, q_labels[s:e], r[s:e])])
    ncm = (nearest_class_mean(query_emb, ref_emb, ref_labels) == query_labels).double().mean()
    n_valid = int((r > 0).sum())
    out = {f"knn{kk}": (sums[i] / len(query)).item() for i, kk in enumerate(ks)}
    out["ncm"] = ncm.item()
    for name, total in zip(("p_at_1", "r_precision", "map_at_r"), sums[len(ks) :]):
        out[name] = (total / n_valid).item() if n_valid else math.nan
    return out
