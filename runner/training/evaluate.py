"""Exact retrieval and classification metrics of embeddings: kNN, NCM, P@1, R-precision, MAP@R.

Brute force over blocks of queries (float64 below MIN_REFS_TO_FILTER references, float32 above),
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
    aug: torch.Tensor  # [dim + 1, n]: rows -2 * ref.T, then |ref|²
    sample: torch.Tensor  # [dim + 1, n / SAMPLE_STRIDE], every SAMPLE_STRIDE-th column of aug
    n: int  # real references

    @classmethod
    def build(cls, ref: torch.Tensor, dtype: torch.dtype = torch.float32) -> "_Refs":
        """Centre the references on their mean and stack -2 * ref.T over the squared norms."""
        mean = ref.mean(0, dtype=torch.float64)
        centred = (ref - mean).to(dtype)
        # [q, 1] @ aug = |r|² - 2 q.r, the distance minus |q|² (constant per row, so ranks are
        # exact): one plain GEMM, while addmm's broadcast of |r|² costs as much as the product
        aug = torch.cat([-2 * centred.t(), centred.square().sum(1)[None]])
        return cls(mean, aug, aug[:, :: SAMPLE_STRIDE].contiguous(), len(ref))

    def lift(self, query: torch.Tensor) -> torch.Tensor:
        """Queries centred like the references, with the trailing 1 that picks up |ref|²."""
        return torch.nn.functional.pad((query - self.mean).to(self.aug.dtype), (0, 1), value=1.0)


def _topk_direct(q: torch.Tensor, refs: _Refs, k: int, self_cols: Optional[torch.Tensor]) -> torch.Tensor:
    """Indices of the k nearest references, nearest first, from full distance rows."""
    d = q @ refs.aug
    if self_cols is not None:  # exclude each query's own index, not every identical vector
        d[torch.arange(len(q), device=q.device), self_cols] = math.inf
    return d.topk(k, dim=1, largest=False).indices


def _collect_kernel():
    """A numba kernel: append each column under its row's tau (but the row's own) as a sort key.

    One pass over a GEMM tile, no temporaries: on CPU this replaces a compare, a nonzero and
    gathers that together cost three times the GEMM. A key is the distance's bits made
    order-preserving as an unsigned int, over the column: sorting keys orders by distance,
    ties by column, and numpy's vectorised integer sort is 3x faster than torch.topk here.
    Rows in parallel (numba's threads, as many as torch uses). Compiled on first use, cached.
    """
    global _COLLECT
    if _COLLECT is None:
        import numba  # optional speed-up, seconds to import: only for large reference sets

        sign, low, shift = np.uint64(0x80000000), np.uint64(0xFFFFFFFF), np.uint64(32)

        @numba.njit(cache=True, parallel=True, boundscheck=False)
        def collect(d, bits, tau, col0, own, keys, fill):
            cap = keys.shape[1]
            for i in numba.prange(d.shape[0]):
                f, t, skip = fill[i], tau[i], own[i] - col0
                for j in range(d.shape[1]):
                    if d[i, j] <= t and j != skip:
                        if f < cap:
                            u = np.uint64(bits[i, j])
                            u = (u ^ low) if (u & sign) else (u | sign)  # negative floats reversed
                            keys[i, f] = (u << shift) | np.uint64(col0 + j)
                        f += 1
                fill[i] = f

        _COLLECT = collect
    return _COLLECT


_COLLECT = None


def _topk_filtered(q: torch.Tensor, refs: _Refs, k: int, self_cols: Optional[torch.Tensor]) -> torch.Tensor:
    """Same as _topk_direct, but only the few references under a per-query threshold are sorted.

    torch.topk with a large k over 10^5 columns costs several times the GEMM on CPU; a threshold
    from a 1/SAMPLE_STRIDE sample keeps ~k + 3 sigma candidates per row, and rows that end up
    with fewer than k (rare) or far too many (e.g. collapsed embeddings) are redone directly.
    The GEMM runs tile by tile into one buffer, which the kernel scans.
    """
    import numba  # seconds to import, and needed only for large reference sets
    k_need = k + (self_cols is not None)
    expected = k_need * refs.sample.shape[1] / refs.n
    k_sample = min(refs.sample.shape[1], math.ceil(expected + 3 * math.sqrt(expected) + 2))
    tau = (q @ refs.sample).topk(k_sample, dim=1, largest=False, sorted=False).values.amax(1)
    limit = 2 * k_sample * SAMPLE_STRIDE + k_need  # bounds memory when many distances tie
    b, n = len(q), refs.aug.shape[1]
    keys, fill = np.full((b, limit), np.iinfo(np.uint64).max, np.uint64), np.zeros(b, np.int64)
    own = self_cols.numpy() if self_cols is not None else np.full(b, -1, np.int64)
    collect, tau_np = _collect_kernel(), tau.numpy()
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    tile = max(256, TILE_BYTES // (4 * b))
    buf = torch.empty(b, tile)
    for start in range(0, n, tile):
        width = min(tile, n - start)  # a narrower last tile: a copy keeps the kernel's one (C) layout
        d = torch.mm(q, refs.aug[:, start : start + tile], out=buf[:, :width])
        d = (d if width == tile else d.contiguous()).numpy()
        collect(d, d.view(np.uint32), tau_np, start, own, keys, fill)
    width = max(k, min(int(fill.max()), limit))
    top = np.sort(keys[:, :width], axis=1)[:, :k]
    out = torch.from_numpy((top & np.uint64(0xFFFFFFFF)).astype(np.int64))
    redo = torch.from_numpy(np.flatnonzero((fill < k) | (fill > limit)))
    step = _block_size(refs.n, k, filtered=False)  # full rows: keep to the direct path's budget
    for s in range(0, len(redo), step):
        rows = redo[s : s + step]
        out[rows] = _topk_direct(q[rows], refs, k, None if self_cols is None else self_cols[rows])
    return out


def _use_filter(ref_emb: torch.Tensor, k: int) -> bool:
    """Whether the threshold filter pays off: on CPU, when k is a small fraction of the references."""
    # on GPU topk is fast and nonzero syncs, so full rows win there
    return ref_emb.device.type == "cpu" and len(ref_emb) >= MIN_REFS_TO_FILTER and (k + 1) * 4 <= len(ref_emb)


def _block_size(n_ref: int, k: int, filtered: bool) -> int:
    """Queries per block such that one block's buffers stay near BLOCK_BYTES."""
    # per query: a full distance row, or (filtered) one tile row and the candidate buffers (12 B
    # per slot, ~3 k slots) and topk's copies; then about 40 B per neighbour for the metrics
    # (labels, masks, cumsum, float64 precisions)
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
    device = query_emb.device
    _, inverse = torch.unique(torch.cat([query_labels, ref_labels]), return_inverse=True)
    q_labels, r_labels = inverse[: len(query_labels)], inverse[len(query_labels) :]
    r = torch.bincount(r_labels, minlength=int(inverse.max()) + 1)[q_labels] - int(exclude)
    k = max(max(ks), int(r.max()) if len(r) else 0)
    filtered = _use_filter(ref_emb, k)
    # float64 where it costs nothing (small reference sets): float32 rounding (~1e-7 of the
    # norms) can swap near-tied neighbours, and kNN then differs from an exact float64 search
    refs = _Refs.build(ref_emb, torch.float64 if len(ref_emb) < MIN_REFS_TO_FILTER else torch.float32)
    block_size = block_size or _block_size(refs.n, k, filtered)
    query = refs.lift(query_emb)
    sums = torch.zeros(len(ks) + 3, dtype=torch.float64, device=device)
    for s in range(0, len(query), block_size):
        e = min(s + block_size, len(query))
        self_cols = torch.arange(s, e, device=device) if exclude else None
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
