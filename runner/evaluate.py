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
SAMPLE_STRIDE = 32
"""One reference in SAMPLE_STRIDE estimates each query's k-th neighbour distance."""
MIN_REFS_TO_FILTER = 2048
"""Below this many references a plain topk over full distance rows is as fast."""


@dataclass(frozen=True)
class _Refs:
    """Centred references as the right factor of one GEMM that yields distances."""

    mean: torch.Tensor  # [dim] float64; centring shrinks norms, hence the cancellation in |a|²-2ab+|b|²
    aug: torch.Tensor  # [dim + 1, n padded to 8k]: rows -2 * ref.T, then |ref|²; inf on padding
    sample: torch.Tensor  # [dim + 1, n / SAMPLE_STRIDE], every SAMPLE_STRIDE-th column of aug
    n: int  # real references

    @classmethod
    def build(cls, ref: torch.Tensor) -> "_Refs":
        """Centre the references on their mean and stack -2 * ref.T over the squared norms."""
        mean = ref.mean(0, dtype=torch.float64)
        centred = (ref - mean).float()
        # [q, 1] @ aug = |r|² - 2 q.r, the distance minus |q|² (constant per row, so ranks are
        # exact): one plain GEMM, while addmm's broadcast of |r|² costs as much as the product
        aug = torch.cat([-2 * centred.t(), centred.square().sum(1)[None]])
        sample = aug[:, : len(ref) : SAMPLE_STRIDE].contiguous()
        pad = -len(ref) % 8  # whole 8-column groups let _scan read a tile's mask as int64 words
        aug = torch.cat([aug, aug.new_zeros(len(aug), pad)], 1)
        aug[-1, len(ref) :] = math.inf  # padding is never near anything
        return cls(mean, aug, sample, len(ref))

    def lift(self, query: torch.Tensor) -> torch.Tensor:
        """Queries centred like the references, with the trailing 1 that picks up |ref|²."""
        return torch.nn.functional.pad((query - self.mean).float(), (0, 1), value=1.0)


def _topk_direct(q: torch.Tensor, refs: _Refs, k: int, self_cols: Optional[torch.Tensor]) -> torch.Tensor:
    """Indices of the k nearest references, nearest first, from full distance rows."""
    d = q @ refs.aug
    if self_cols is not None:  # exclude each query's own index, not every identical vector
        d[torch.arange(len(q), device=q.device), self_cols] = math.inf
    return d.topk(k, dim=1, largest=False).indices


def _scan(q: torch.Tensor, refs: _Refs, tau: torch.Tensor, tile: int):
    """Row, ref and distance of each pair under its row's tau; each hit's slot in its row; hits per row."""
    words, vals, widths = [], [], []
    for start in range(0, refs.aug.shape[1], tile):
        d = q @ refs.aug[:, start : start + tile]
        # nonzero is the slow part on CPU: run it on 8-flag int64 words (~1 in 10 has a hit),
        # keep those words' 8 distances, and find the exact hits once per block below
        hit_words = (d <= tau[:, None]).view(-1).view(torch.int64).nonzero().squeeze(1)
        words.append(hit_words), vals.append(d.view(-1, 8).index_select(0, hit_words)), widths.append(d.shape[1])
    b, n_tiles, device = len(q), len(words), q.device
    sizes = torch.tensor([len(w) for w in words], device=device)
    tile_id = torch.repeat_interleave(torch.arange(n_tiles, device=device), sizes)
    first = torch.cat(words) * 8  # position of each word in its tile; widths are multiples of 8
    width = torch.tensor(widths, device=device).index_select(0, tile_id)
    rows = first // width
    word_col = first % width + tile_id * tile
    vals = torch.cat(vals)
    hit = (vals <= tau.index_select(0, rows)[:, None]).view(-1).nonzero().squeeze(1)
    word = hit // 8  # 1-D gathers below: index_select is much faster than advanced indexing
    rows, tile_id, vals = rows.index_select(0, word), tile_id.index_select(0, word), vals.view(-1).index_select(0, hit)
    cols = word_col.index_select(0, word) + hit % 8
    # slot = hits of the same row in earlier tiles + rank among this tile's hits of that row
    group = tile_id * b + rows
    count = torch.bincount(group, minlength=n_tiles * b)
    per_tile = count.view(n_tiles, b)
    before = ((per_tile.cumsum(0) - per_tile).view(-1) - (count.cumsum(0) - count)).index_select(0, group)
    slots = before + torch.arange(len(group), device=device)
    return rows, cols, vals, slots, per_tile.sum(0)


def _topk_filtered(q: torch.Tensor, refs: _Refs, k: int, self_cols: Optional[torch.Tensor]) -> torch.Tensor:
    """Same as _topk_direct, but topk only runs on the few references under a per-query threshold.

    torch.topk with a large k over 10^5 columns costs several times the GEMM on CPU; a threshold
    from a 1/SAMPLE_STRIDE sample keeps ~k + 3 sigma candidates per row, and rows that end up
    with fewer than k (rare) or far too many (e.g. collapsed embeddings) are redone directly.
    """
    k_need = k + (self_cols is not None)
    expected = k_need * refs.sample.shape[1] / refs.n
    k_sample = min(refs.sample.shape[1], math.ceil(expected + 3 * math.sqrt(expected) + 2))
    tau = (q @ refs.sample).topk(k_sample, dim=1, largest=False, sorted=False).values.amax(1)
    tile = max(256, TILE_BYTES // (4 * len(q))) // 8 * 8
    rows, cols, vals, slots, fill = _scan(q, refs, tau, tile)
    limit = 2 * k_sample * SAMPLE_STRIDE + k_need  # bounds memory when many distances tie
    if self_cols is not None:
        vals = vals.masked_fill(cols == self_cols.index_select(0, rows), math.inf)
    keep = (fill.index_select(0, rows) <= limit).nonzero().squeeze(1)
    width = max(k, min(int(fill.max()), limit))
    flat = (rows * width + slots).index_select(0, keep)
    dist = torch.full((len(q), width), math.inf, device=q.device)
    index = torch.zeros((len(q), width), dtype=torch.long, device=q.device)
    dist.view(-1)[flat], index.view(-1)[flat] = vals.index_select(0, keep), cols.index_select(0, keep)
    top = dist.topk(k, dim=1, largest=False)
    out = index.gather(1, top.indices)
    redo = ((top.values[:, -1] == math.inf) | (fill > limit)).nonzero().squeeze(1)
    step = _block_size(refs.n, k, filtered=False)  # full rows: keep to the direct path's budget
    for s in range(0, len(redo), step):
        rows = redo[s : s + step]
        out[rows] = _topk_direct(q[rows], refs, k, None if self_cols is None else self_cols[rows])
    return out


def _use_filter(refs: _Refs, k: int) -> bool:
    """Whether the threshold filter pays off: on CPU, when k is a small fraction of the references."""
    # on GPU topk is fast and nonzero syncs, so full rows win there
    return refs.aug.device.type == "cpu" and refs.n >= MIN_REFS_TO_FILTER and (k + 1) * 4 <= refs.n


def _block_size(n_ref: int, k: int, filtered: bool) -> int:
    """Queries per block such that one block's buffers stay near BLOCK_BYTES."""
    # per query: a full distance row, or (filtered) one tile row and ~k candidates; then about
    # 40 B per neighbour for the metrics (labels, masks, cumsum, float64 precisions) and, when
    # filtered, ~60 B per candidate (row, column, slot, distance, padded copies) and the 8-wide
    # distance words of _scan (32 B per word with a hit, at most ~1.4 k of them)
    row_bytes = (16 * 2**10 + 100 * k + min(4 * n_ref, 45 * k)) if filtered else (4 * n_ref + 40 * k)
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
    query = refs.lift(query_emb)
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
