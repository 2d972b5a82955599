"""The loss and its active fraction (tuples with a non-zero loss) in one forward pass."""

from __future__ import annotations

from typing import Optional

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import distributed as pml_dist


_PER_TUPLE = ("element", "pos_pair", "neg_pair", "triplet")


def _candidates(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """How many tuples of each kind the batch holds: the denominator of the active fraction."""
    same = labels[:, None] == labels[None, :]
    pos = same.sum(1) - 1
    neg = (~same).sum(1)
    n = torch.tensor(float(len(labels)), device=labels.device)
    return {"element": n, "pos_pair": pos.sum().float(), "neg_pair": neg.sum().float(),
            "triplet": (pos * neg).sum().float()}


def _active_fraction(loss_dict: dict, labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Tuples with a non-zero loss over all tuples of that kind in the batch.

    The denominator counts every candidate pair/triplet, mined or not, so runs with and
    without a miner are comparable: it falls as the embedding satisfies more constraints.
    """
    candidates = _candidates(labels.to(device))
    active, total = [], []
    for name, info in loss_dict.items():
        if (name.endswith("_reg_loss") or info["reduction_type"] not in _PER_TUPLE
                or not torch.is_tensor(info["losses"]) or info["losses"].ndim == 0):
            continue  # embedding_/weight_/beta_reg_loss and reduced losses are not tuples
        active.append((info["losses"].detach() > 0).sum().float())
        total.append(candidates[info["reduction_type"]])
    if not active:
        return torch.full((), float("nan"), device=device)
    return torch.stack(active).sum() / torch.stack(total).sum().clamp_min(1)


def _forward_keeping_dict(loss_fn, embeddings, labels, indices_tuple) -> tuple[torch.Tensor, dict]:
    """The steps of BaseMetricLossFunction.forward (PML 2.9), returning the loss dict too."""
    loss_fn.reset_stats()
    c_f.check_shapes(embeddings, labels)
    if labels is not None:
        labels = c_f.to_device(labels, embeddings)
    ref_emb, ref_labels = c_f.set_ref_emb(embeddings, labels, None, None)
    loss_dict = loss_fn.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
    loss_fn.add_embedding_regularization_to_loss_dict(loss_dict, embeddings)
    return loss_fn.reducer(loss_dict, embeddings, labels), loss_dict


def loss_with_stats(loss_fn: torch.nn.Module, embeddings: torch.Tensor, labels: torch.Tensor,
                    indices_tuple: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and the fraction of its per-tuple terms that are > 0, in one pass.

    Both are 0-dim tensors (no host sync). The fraction pools element, pos_pair,
    neg_pair and triplet terms; it is NaN when there are none (nothing mined, an
    already-reduced loss) and for modules other than a BaseMetricLossFunction that
    keeps PML's forward, bare or in a DistributedLossWrapper (efficient=False).
    """
    inner = loss_fn.loss if isinstance(loss_fn, pml_dist.DistributedLossWrapper) and not loss_fn.efficient else loss_fn
    if not isinstance(inner, BaseMetricLossFunction) or type(inner).forward is not BaseMetricLossFunction.forward:
        return loss_fn(embeddings, labels, indices_tuple), torch.full((), float("nan"), device=embeddings.device)
    world_size = torch.distributed.get_world_size() if pml_dist.is_distributed() else 1
    if inner is loss_fn or world_size == 1:  # the wrapper calls the bare loss then
        loss, loss_dict = _forward_keeping_dict(inner, embeddings, labels, indices_tuple)
        return loss, _active_fraction(loss_dict, labels, embeddings.device)
    # DistributedLossWrapper.forward_regular_loss: the loss over all ranks' embeddings, × world_size.
    all_emb, all_labels, _, _, _ = pml_dist.gather_emb_and_ref(embeddings, labels)
    loss, loss_dict = _forward_keeping_dict(inner, all_emb, all_labels, indices_tuple)
    return loss * world_size, _active_fraction(loss_dict, all_labels, embeddings.device)
