"""DBLLoss: the pairwise binary cross-entropy loss of Vo & Hays, as taught in the course."""

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu


class DBLLoss(BaseMetricLossFunction):
    """Binary cross-entropy on "do these two match?" for every (mined) pair.

    A pair at distance D matches with probability p = (1 + e^-m) / (1 + e^(D - m)),
    so p = 1 at D = 0 and p falls below 1/2 around D = m. The loss is -log p for a
    positive pair and -log(1 - p) for a negative pair. It returns "pos_loss" and
    "neg_loss" entries (reduction types pos_pair, neg_pair); with the default
    MeanReducer the loss is mean(positive pairs) + mean(negative pairs), so the
    many negatives of a P×K batch do not drown the few positives.

    Pairs come from the miner (triplets (a, p, n) become pairs (a, p) and (a, n),
    as in PML's lmu.convert_to_pairs), or all pairs of the batch when there is none.

    Args:
        margin: m, the distance at which p is close to 1/2 (default 1.0). With the
            default L2-normalised embeddings D ≤ 2, so p ≥ (1 + e^-m) / (1 + e^(2 - m)).
        eps: negative-pair distances are clamped to at least eps inside log(1 - p),
            which is -inf at D = 0; this caps a coinciding negative pair's loss at
            about softplus(m) - log(eps) and keeps gradients finite.
    """

    def __init__(self, margin: float = 1.0, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if self.distance.is_inverted:
            raise ValueError("DBLLoss needs a distance (e.g. LpDistance), not a similarity")
        self.margin = margin
        self.eps = eps
        self.add_to_recordable_attributes(list_of_names=["margin"], is_stat=False)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels, ref_labels)
        if len(a1) == 0 and len(a2) == 0:
            return self.zero_losses()
        mat = self.distance(embeddings, ref_emb)
        # losses of 0 (not an empty tensor) tell the reducer "nothing here", as in ContrastiveLoss
        pos_loss = self.pos_pair_loss(mat[a1, p]) if len(a1) > 0 else 0
        neg_loss = self.neg_pair_loss(mat[a2, n]) if len(a2) > 0 else 0
        return {
            "pos_loss": {"losses": pos_loss, "indices": (a1, p), "reduction_type": "pos_pair"},
            "neg_loss": {"losses": neg_loss, "indices": (a2, n), "reduction_type": "neg_pair"},
        }

    def pos_pair_loss(self, dist: torch.Tensor) -> torch.Tensor:
        """-log p = softplus(D - m) - softplus(-m): no overflow at large D, 0 at D = 0."""
        m = torch.as_tensor(self.margin, dtype=dist.dtype, device=dist.device)
        return F.softplus(dist - m) - F.softplus(-m)

    def neg_pair_loss(self, dist: torch.Tensor) -> torch.Tensor:
        """-log(1 - p) = softplus(m - D) - log(1 - e^-D), written without cancellation."""
        dist = dist.clamp(min=self.eps)
        return F.softplus(self.margin - dist) - torch.log(-torch.expm1(-dist))

    def _sub_loss_names(self):
        return ["pos_loss", "neg_loss"]
