"""Exact retrieval and classification metrics of embeddings: kNN, NCM, P@1, R-precision, MAP@R.

Brute force in float32 over blocks of queries, so memory stays bounded whatever the data size.
Definitions follow scikit-learn (kNN, NCM) and pytorch-metric-learning's AccuracyCalculator
(P@1, R-precision, MAP@R with k="max_bin_count"); tests/test_evaluate.py checks both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

BLOCK_BYTES = 256 * 2**20
"""Memory budget of one block of queries when block_size is None."""
TILE_BYTES = 4 * 2**20
"""Size of one distance tile of the filtered search: small enough to stay in the CPU cache."""
SAMPLE_STRIDE = 16
"""One reference in SAMPLE_STRIDE estimates each query's k-th neighbour distance."""
MIN_REFS_TO_FILTER = 2048
"""Below this many references a plain topk over full distance rows is as fast."""


@dataclass(frozen=True)
class _Refs:
    """Centred reference embeddings laid out for the distance GEMM."""

    mean: torch.Tensor  # [dim] float64; centring shrinks norms, hence the cancellation in |a|²-2ab+|b|²
    t: torch.Tensor  # [dim, n] so a tile of references is a column slice (faster GEMM than ref.T)
    sq: torch.Tensor  # [n] squared norms
    sample_t: torch.Tensor  # [dim, n / SAMPLE_STRIDE], every SAMPLE_STRIDE-th reference
    sample_sq: torch.Tensor

    @classmethod
    def build(cls, ref: torch.Tensor) -> "_Refs":
        """Centre the references on their mean and precompute squared norms."""
        mean = ref.mean(0, dtype=torch.float64)
        t = (ref - mean).float().t().contiguous()
        sq = t.square().sum(0)
        sample_t = t[:, ::SAMPLE_STRIDE].contiguous()
        return cls(mean, t, sq, sample_t, sq[::SAMPLE_STRIDE].contiguous())

    @property
    def n(self) -> int:
        return self.t.shape[1]


def _distances(q: torch.Tensor, ref_t: torch.Tensor, ref_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances minus |q|², which is constant per row and so never changes a ranking."""
    return torch.addmm(ref_sq, q, ref_t, alpha=-2)


def _topk_direct(q: torch.Tensor, refs: _Refs, k: int, self_cols: Optional[torch.Tensor]) -> torch.Tensor:
    """Indices of the k nearest references, nearest first, from full distance rows."""
    d = _distances(q, refs.t, refs.sq)
    if self_cols is not None:  # exclude each query's own index, not every identical vector
        d[torch.arange(len(q), device=q.device), self_cols] = math.inf
    return d.topk(k, dim=1, largest=False).indices


def _scan(q: torch.Tensor, refs: _Refs, tau: torch.Tensor, tile: int):
    """All (row, ref, distance) with distance <= tau[row], plus each hit's slot in its row."""
    b = len(q)
    arange = torch.arange(b * tile, device=q.device)
    fill = torch.zeros(b, dtype=torch.long, device=q.device)
    rows, cols, vals, slots = [], [], [], []
    for start in range(0, refs.n, tile):
        d = _distances(q, refs.t[:, start : start + tile], refs.sq[start : start + tile])
        # a 1-D nonzero is much cheaper than a 2-D one on CPU; the hits come out row-major
        flat = (d <= tau[:, None]).view(-1).nonzero().squeeze(1)
        r = flat // d.shape[1]
        count = torch.bincount(r, minlength=b)
        first = count.cumsum(0) - count
        slots.append(fill[r] + arange[: len(r)] - first[r])
        fill += count
        rows.append(r)
        cols.append(flat % d.shape[1] + start)
        vals.append(d.view(-1)[flat])
    return torch.cat(rows), torch.cat(cols), torch.cat(vals), torch.cat(slots), fill


def _topk_filtered(q: torch.Tensor, refs: _Refs, k: int, self_cols: Optional[torch.Tensor]) -> torch.Tensor:
    """Same as _topk_direct, but topk only runs on the few references under a per-query threshold.

    torch.topk with a large k over 10^5 columns costs several times the GEMM on CPU; a threshold
    from a 1/SAMPLE_STRIDE sample keeps ~k + 3 sigma candidates per row, and rows that end up
    with fewer than k (rare) or far too many (e.g. collapsed embeddings) are redone directly.
    """
    k_need = k + (self_cols is not None)
    expected = k_need * refs.sample_t.shape[1] / refs.n
    k_sample = min(refs.sample_t.shape[1], math.ceil(expected + 3 * math.sqrt(expected) + 2))
    tau = _distances(q, refs.sample_t, refs.sample_sq).kthvalue(k_sample, dim=1).values
    tile = max(256, TILE_BYTES // (4 * len(q)))
    rows, cols, vals, slots, fill = _scan(q, refs, tau, tile)
    limit = 2 * k_sample * SAMPLE_STRIDE + k_need  # bounds memory when many distances tie
    keep = fill[rows] <= limit
    if self_cols is not None:
        vals = vals.masked_fill(cols == self_cols[rows], math.inf)
    rows, cols, vals, slots = rows[keep], cols[keep], vals[keep], slots[keep]
    width = max(k, min(int(fill.max()), limit))
    dist = torch.full((len(q), width), math.inf, device=q.device)
    index = torch.zeros((len(q), width), dtype=torch.long, device=q.device)
    dist[rows, slots], index[rows, slots] = vals, cols
    top = dist.topk(k, dim=1, largest=False)
    out = index.gather(1, top.indices)
    redo = (top.values[:, -1] == math.inf) | (fill > limit)
    redo = redo.nonzero().squeeze(1)
    step = _block_size(refs.n, k, filtered=False)  # full rows: keep to the direct path's budget
    for s in range(0, len(redo), step):
        rows = redo[s : s + step]
        out[rows] = _topk_direct(q[rows], refs, k, None if self_cols is None else self_cols[rows])
    return out


def _use_filter(refs: _Refs, k: int) -> bool:
    """Whether the threshold filter pays off: on CPU, when k is a small fraction of the references."""
    # on GPU topk is fast and nonzero syncs, so full rows win there
    return refs.t.device.type == "cpu" and refs.n >= MIN_REFS_TO_FILTER and (k + 1) * 4 <= refs.n


def _block_size(n_ref: int, k: int, filtered: bool) -> int:
    """Queries per block such that one block's buffers stay near BLOCK_BYTES."""
    # per query: a full distance row, or (filtered) one tile row and ~k candidates; then about
    # 40 B per neighbour for the metrics (labels, masks, cumsum, float64 precisions) and, when
    # filtered, 60 B per candidate (row, column, slot, distance, padded copies)
    row_bytes = (16 * 2**10 + 100 * k) if filtered else (4 * n_ref + 40 * k)
    size = max(1, BLOCK_BYTES // row_bytes)
    return min(size, 2048) if filtered else size  # bigger blocks only shrink the tiles


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
    block_size = max(1, BLOCK_BYTES // (16 * (len(classes) + ref_emb.shape[1])))  # float64 rows
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
        block_size: queries per block; None picks it from BLOCK_BYTES.
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
    _, inverse = torch.unique(torch.cat([query_labels, ref_labels]), return_inverse=True)
    q_labels, r_labels = inverse[: len(query_labels)], inverse[len(query_labels) :]
    r = torch.bincount(r_labels, minlength=int(inverse.max()) + 1)[q_labels] - int(exclude)
    k = max(max(ks), int(r.max()) if len(r) else 0)
    refs = _Refs.build(ref_emb)
    filtered = _use_filter(refs, k)
    block_size = block_size or _block_size(refs.n, k, filtered)
    query = (query_emb - refs.mean).float()
    sums = torch.zeros(len(ks) + 3, dtype=torch.float64, device=query.device)
    for s in range(0, len(query), block_size):
        e = min(s + block_size, len(query))
        self_cols = torch.arange(s, e, device=query.device) if exclude else None
        topk = _topk_filtered if filtered else _topk_direct
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
