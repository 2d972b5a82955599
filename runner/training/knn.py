"""Exact k nearest references of a block of queries: one GEMM, then a full topk or a filtered one.

Brute force in float64 below MIN_REFS_TO_FILTER references, float32 above. Large reference
sets on CPU take the threshold-filtered search (a numba kernel keeps the few references under
a per-query threshold). A query may name one reference column it must never be matched with
(`own`, -1 for none): its own entry when the queries are the references, or the same image
in a query/gallery split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

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
class Refs:
    """Centred references as the right factor of one GEMM that yields distances."""

    mean: torch.Tensor  # [dim] float64; centring shrinks norms, hence the cancellation in |a|²-2ab+|b|²
    aug: torch.Tensor  # [dim + 1, n]: rows -2 * ref.T, then |ref|²
    sample: torch.Tensor  # [dim + 1, n / SAMPLE_STRIDE], every SAMPLE_STRIDE-th column of aug
    n: int  # real references

    @classmethod
    def build(cls, ref: torch.Tensor, dtype: torch.dtype = torch.float32) -> "Refs":
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


def topk_direct(q: torch.Tensor, refs: Refs, k: int, own: Optional[torch.Tensor]) -> torch.Tensor:
    """Indices of the k nearest references, nearest first, from full distance rows."""
    d = q @ refs.aug
    if own is not None:  # exclude each query's own column, not every identical vector
        rows = torch.nonzero(own >= 0).flatten()
        d[rows, own[rows]] = math.inf
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


def topk_filtered(q: torch.Tensor, refs: Refs, k: int, own: Optional[torch.Tensor]) -> torch.Tensor:
    """Same as topk_direct, but only the few references under a per-query threshold are sorted.

    torch.topk with a large k over 10^5 columns costs several times the GEMM on CPU; a threshold
    from a 1/SAMPLE_STRIDE sample keeps ~k + 3 sigma candidates per row, and rows that end up
    with fewer than k (rare) or far too many (e.g. collapsed embeddings) are redone directly.
    The GEMM runs tile by tile into one buffer, which the kernel scans.
    """
    import numba  # seconds to import, and needed only for large reference sets
    k_need = k + (own is not None)
    expected = k_need * refs.sample.shape[1] / refs.n
    k_sample = min(refs.sample.shape[1], math.ceil(expected + 3 * math.sqrt(expected) + 2))
    tau = (q @ refs.sample).topk(k_sample, dim=1, largest=False, sorted=False).values.amax(1)
    limit = 2 * k_sample * SAMPLE_STRIDE + k_need  # bounds memory when many distances tie
    b, n = len(q), refs.aug.shape[1]
    keys, fill = np.full((b, limit), np.iinfo(np.uint64).max, np.uint64), np.zeros(b, np.int64)
    own_np = own.numpy() if own is not None else np.full(b, -1, np.int64)  # -1 - col0 is never a column
    collect, tau_np = _collect_kernel(), tau.numpy()
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    tile = max(256, TILE_BYTES // (4 * b))
    buf = torch.empty(b, tile)
    for start in range(0, n, tile):
        width = min(tile, n - start)  # a narrower last tile: a copy keeps the kernel's one (C) layout
        d = torch.mm(q, refs.aug[:, start : start + tile], out=buf[:, :width])
        d = (d if width == tile else d.contiguous()).numpy()
        collect(d, d.view(np.uint32), tau_np, start, own_np, keys, fill)
    width = max(k, min(int(fill.max()), limit))
    top = np.sort(keys[:, :width], axis=1)[:, :k]
    out = torch.from_numpy((top & np.uint64(0xFFFFFFFF)).astype(np.int64))
    redo = torch.from_numpy(np.flatnonzero((fill < k) | (fill > limit)))
    step = block_size(refs.n, k, filtered=False)  # full rows: keep to the direct path's budget
    for s in range(0, len(redo), step):
        rows = redo[s : s + step]
        out[rows] = topk_direct(q[rows], refs, k, None if own is None else own[rows])
    return out


def use_filter(ref_emb: torch.Tensor, k: int) -> bool:
    """Whether the threshold filter pays off: on CPU, when k is a small fraction of the references."""
    # on GPU topk is fast and nonzero syncs, so full rows win there
    return ref_emb.device.type == "cpu" and len(ref_emb) >= MIN_REFS_TO_FILTER and (k + 1) * 4 <= len(ref_emb)


def block_size(n_ref: int, k: int, filtered: bool) -> int:
    """Queries per block such that one block's buffers stay near BLOCK_BYTES."""
    # per query: a full distance row, or (filtered) one tile row and the candidate buffers (12 B
    # per slot, ~3 k slots) and topk's copies; then about 40 B per neighbour for the metrics
    # (labels, masks, cumsum, float64 precisions)
    row_bytes = (16 * 2**10 + 100 * k) if filtered else (4 * n_ref + 40 * k)
    size = max(1, BLOCK_BYTES // row_bytes)
    return min(size, 2048) if filtered else size  # bigger blocks only shrink the tiles
