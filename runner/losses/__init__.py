"""Losses and miners by PML class name (plus DBLLoss): names, checked construction, statistics.

spec.resolve uses the names and checks; training builds the objects. Modules: names
(lookup, aliases, compatibility tables), build (kwargs checks, build_loss/build_miner),
stats (loss_with_stats), dbl_loss (DBLLoss).
"""

from runner.losses.build import (build_loss, build_miner, check_compatible, needs_positive_pairs,
                                  resolve_miner_margin)
from runner.losses.dbl_loss import DBLLoss
from runner.losses.names import (LOSS_INPUT, MINER_OUTPUT, UNSUPPORTED_LOSSES, UNSUPPORTED_MINERS, loss_class,
                                  miner_class, requires_triplets)
from runner.losses.stats import loss_with_stats

__all__ = ["LOSS_INPUT", "MINER_OUTPUT", "UNSUPPORTED_LOSSES", "UNSUPPORTED_MINERS", "DBLLoss", "build_loss", "build_miner", "check_compatible", "loss_class", "loss_with_stats",
           "miner_class", "needs_positive_pairs", "requires_triplets", "resolve_miner_margin"]
