"""PML loss and miner classes by name: aliases, what cannot be selected, and what each consumes.

The tables record what PML 2.9's source does with a miner's output.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Optional

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from runner.config import ConfigError, suggest
from runner.losses.dbl_loss import DBLLoss


LOSS_ALIASES = {
    "triplet": "TripletMarginLoss", "contrastive": "ContrastiveLoss", "dbl": "DBLLoss",
    "ms": "MultiSimilarityLoss", "ntxent": "NTXentLoss", "arcface": "ArcFaceLoss",
    "proxy_anchor": "ProxyAnchorLoss",
}

MINER_ALIASES = {
    "triplet": "TripletMarginMiner", "pair": "PairMarginMiner", "ms": "MultiSimilarityMiner",
    "batch_hard": "BatchHardMiner",
}

# Classes in PML's modules that a runner config cannot select, and why.
UNSUPPORTED_LOSSES = {
    "BaseMetricLossFunction": "an abstract base class",
    "GenericPairLoss": "an abstract base class",
    "BaseLossWrapper": "a wrapper that needs another loss object",
    "CrossBatchMemory": "a wrapper that needs another loss object",
    "MultipleLosses": "a wrapper that needs other loss objects",
    "SelfSupervisedLoss": "a wrapper that needs another loss object",
    "ManifoldLoss": "unsupervised: it rejects labels",
    "VICRegLoss": "self-supervised: it rejects labels",
}

UNSUPPORTED_MINERS = {
    "BaseMiner": "an abstract base class",
    "EmbeddingsAlreadyPackagedAsTriplets": "for batches laid out as (a, p, n) triplets, which no sampler here makes",
}

# What each loss's compute_loss does with an indices_tuple (PML 2.9 source):
#   triplets: lmu.convert_to_triplets; pairs from a pair miner are joined on their anchor
#   pairs:    lmu.convert_to_pairs; a triplet (a, p, n) becomes pairs (a, p) and (a, n)
#   weights:  lmu.convert_to_weights; mined tuples only reweight samples (proxy/classifier losses)
#   none:     c_f.indices_tuple_not_supported raises ValueError
LOSS_INPUT = {
    "TripletMarginLoss": "triplets", "MarginLoss": "triplets", "HistogramLoss": "triplets",
    "DynamicSoftMarginLoss": "triplets",
    "ContrastiveLoss": "pairs", "SignalToNoiseRatioContrastiveLoss": "pairs", "CircleLoss": "pairs",
    "GeneralizedLiftedStructureLoss": "pairs", "LiftedStructureLoss": "pairs",
    "IntraPairVarianceLoss": "pairs", "MultiSimilarityLoss": "pairs", "NTXentLoss": "pairs",
    "SupConLoss": "pairs", "TupletMarginLoss": "pairs", "AngularLoss": "pairs", "NPairsLoss": "pairs",
    "ThresholdConsistentMarginLoss": "pairs", "DBLLoss": "pairs",
    "ArcFaceLoss": "weights", "CosFaceLoss": "weights", "LargeMarginSoftmaxLoss": "weights",
    "SphereFaceLoss": "weights", "SubCenterArcFaceLoss": "weights", "NormalizedSoftmaxLoss": "weights",
    "ProxyAnchorLoss": "weights", "ProxyNCALoss": "weights", "SoftTripleLoss": "weights",
    "NCALoss": "weights", "FastAPLoss": "weights", "SmoothAPLoss": "weights",
    "InstanceLoss": "none", "P2SGradLoss": "none", "PNPLoss": "none", "RankedListLoss": "none",
}

# What each miner's mine() returns: (a, p, n) triplets or (a1, p, a2, n) pairs.
MINER_OUTPUT = {
    "TripletMarginMiner": "triplets", "BatchHardMiner": "triplets", "AngularMiner": "triplets",
    "DistanceWeightedMiner": "triplets",
    "PairMarginMiner": "pairs", "MultiSimilarityMiner": "pairs", "BatchEasyHardMiner": "pairs",
    "HDCMiner": "pairs", "UniformHistogramMiner": "pairs",
}


def classes_of(module: ModuleType, unsupported: dict) -> dict[str, type]:
    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and name not in unsupported}


def _lookup(key: str, name: str, classes: dict, aliases: dict, unsupported: dict, example: str) -> type:
    if name in unsupported:
        raise ConfigError(key, name, f"a class the runner can build; {name} is {unsupported[name]}")
    cls = classes.get(aliases.get(name, name))
    if cls is None:
        hint = suggest(name, [*classes, *aliases])
        raise ConfigError(key, name, f"a PML class name or alias, e.g. {example}{hint}")
    return cls


@functools.lru_cache(maxsize=None)
def _loss_classes() -> dict[str, type]:
    # listed once per process: resolving a 10,000-run grid looks a name up 20,000 times
    return {**classes_of(pml_losses, UNSUPPORTED_LOSSES), "DBLLoss": DBLLoss}


@functools.lru_cache(maxsize=None)
def _miner_classes() -> dict[str, type]:
    return classes_of(pml_miners, UNSUPPORTED_MINERS)


def loss_class(name: str) -> type:
    """The loss class a config name selects (aliases resolved); ConfigError if unknown."""
    return _lookup("loss.name", name, _loss_classes(), LOSS_ALIASES, UNSUPPORTED_LOSSES,
                   "TripletMarginLoss, ContrastiveLoss, ArcFaceLoss or DBLLoss")


def miner_class(name: Optional[str]) -> Optional[type]:
    """The miner class a config name selects; None for no mining (null or 'none')."""
    if name is None or name == "none":
        return None
    return _lookup("miner.name", name, _miner_classes(), MINER_ALIASES,
                   UNSUPPORTED_MINERS, "TripletMarginMiner, PairMarginMiner or MultiSimilarityMiner")


def requires_triplets(loss_name: str) -> bool:
    """Whether the loss is computed on (a, p, n) triplets (TripletMarginLoss, MarginLoss, ...)."""
    return LOSS_INPUT.get(loss_class(loss_name).__name__) == "triplets"
