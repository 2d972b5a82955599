"""Which split is the query and which the gallery: the evaluation protocol of a run, decided here.

    stratified      test queries against the training gallery (every test class is a training class)
    class_disjoint  leave-one-out retrieval within the test images: each against all the others
                    (the test classes are unseen in training, so the training gallery holds no match)
    query_gallery   the split's query images against its gallery images (In-Shop style); a query
                    is never matched with its own image when the gallery holds it too

The validation split (runner.tune) is scored the same way: against the training gallery when its
classes are training classes, leave-one-out within itself when they are held-out classes.
docs/evaluation.md has the formulas; run.h5 records the protocol (`Protocol.attrs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from runner.config import DataConfig
from runner.data.image_set import ImageSet
from runner.data.splits import Splits
from runner.training import evaluate

QUERY_GALLERY = {"stratified": ("test", "train"), "class_disjoint": ("test", "test"),
                 "query_gallery": ("query", "gallery")}
"""Protocol name -> (split of the queries, split of the gallery); the same split twice is leave-one-out."""


@dataclass(frozen=True)
class Protocol:
    """Query and gallery split of the test metrics and of the val_* metrics."""
    name: str
    """stratified, class_disjoint or query_gallery."""
    query: str
    """Split whose images are the queries: test or query."""
    gallery: str
    """Split whose images are the references: train, test (the queries themselves) or gallery."""
    val_gallery: Optional[str] = "train"
    """train (val queries against the training gallery) or val (leave-one-out within val)."""
    recall_at: tuple[int, ...] = evaluate.RECALL_AT
    clustering: bool = True
    """eval.clustering: NMI/AMI of k-means on the queries."""

    @property
    def stored_splits(self) -> tuple[str, ...]:
        """Splits whose embeddings run.h5 keeps: train and test always, and those the metrics used."""
        return tuple(dict.fromkeys(("train", "test", self.query, self.gallery)))

    def attrs(self) -> dict:
        """run.h5 attributes that say how its metrics were computed (docs/hdf5.md)."""
        return {"eval_protocol": self.name, "eval_query": self.query, "eval_gallery": self.gallery,
                "eval_val_gallery": self.val_gallery or "",
                "eval_exclude": "self" if self.query == self.gallery else "same_index",
                "eval_recall_at": list(self.recall_at),
                "eval_kmeans": {"n_init": evaluate.KMEANS_N_INIT, "seed": evaluate.KMEANS_SEED}}


STRATIFIED = Protocol("stratified", "test", "train")
"""Test (and val) queries against the training gallery: the protocol of stratified splits."""


def protocol_for(cfg: DataConfig, splits: Splits, recall_at: tuple[int, ...] = evaluate.RECALL_AT,
                 clustering: bool = True) -> Protocol:
    """The protocol of a data config's splits: query_gallery when the data define query and gallery
    sets, else as data.split says; a split named otherwise (e.g. a data set's official lists) is
    class_disjoint when none of its test classes is a training class, else stratified."""
    if getattr(splits, "query", None) is not None and getattr(splits, "gallery", None) is not None:
        name = "query_gallery"
    elif cfg.split in ("stratified", "class_disjoint"):
        name = cfg.split
    else:
        name = "class_disjoint" if _disjoint(splits.test, splits.train) else "stratified"
    query, gallery = QUERY_GALLERY[name]
    val_gallery = None if splits.val is None else ("val" if _disjoint(splits.val, splits.train) else "train")
    return Protocol(name, query, gallery, val_gallery, tuple(recall_at), clustering)


def _disjoint(a: ImageSet, b: ImageSet) -> bool:
    return not np.isin(a.labels.numpy(), b.labels.numpy()).any()


def same_image_columns(query_index: torch.Tensor, gallery_index: torch.Tensor) -> Optional[torch.Tensor]:
    """Per query, the gallery column holding the same source image (-1: none); None when no query has one."""
    q, g = query_index.numpy(), gallery_index.numpy()
    if len(np.unique(g)) != len(g):
        raise ValueError("gallery images must be distinct (an `index` appears twice)")
    cols = np.full(len(q), -1, np.int64)
    if len(g):
        order = np.argsort(g, kind="stable")
        pos = np.minimum(np.searchsorted(g[order], q), len(g) - 1)
        hit = g[order][pos] == q
        cols[hit] = order[pos[hit]]
    return torch.from_numpy(cols) if (cols >= 0).any() else None


def score(query: ImageSet, query_emb: torch.Tensor, gallery: Optional[ImageSet], gallery_emb: Optional[torch.Tensor],
          recall_at: tuple[int, ...], clustering: bool = True) -> dict[str, float]:
    """Metrics of query against gallery; gallery None is leave-one-out within the queries."""
    if gallery is None:
        return evaluate.compute_metrics(query_emb, query.labels, recall_at=recall_at, ncm_leave_out=True,
                                        clustering=clustering)
    exclude = same_image_columns(query.index, gallery.index)
    return evaluate.compute_metrics(query_emb, query.labels, gallery_emb, gallery.labels, recall_at=recall_at,
                                    exclude=exclude, ncm_leave_out=exclude is not None, clustering=clustering)


def evaluate_splits(protocol: Protocol, splits: Splits, emb: dict[str, torch.Tensor]) -> dict[str, float]:
    """Test metrics, and val_* metrics when there is a val split, of the embeddings of each split (by name)."""
    def pair(query: str, gallery: str) -> dict[str, float]:
        if query == gallery:
            return score(getattr(splits, query), emb[query], None, None, protocol.recall_at, protocol.clustering)
        return score(getattr(splits, query), emb[query], getattr(splits, gallery), emb[gallery], protocol.recall_at,
                     protocol.clustering)

    metrics = pair(protocol.query, protocol.gallery)
    if splits.val is not None and protocol.val_gallery:
        metrics.update({f"val_{k}": v for k, v in pair("val", protocol.val_gallery).items()})
    return metrics
