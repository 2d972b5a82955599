"""Build a config's loss and miner: keyword arguments checked against the class signature.

`build_loss` / `build_miner` look a config's name up (runner.losses.names) and check its
keyword arguments against the class signature (its own and those its PML bases take
through **kwargs), so a typo is a one-line ConfigError naming the key.
"""

from __future__ import annotations

import functools
import inspect
from types import ModuleType
from typing import Any, Optional

import torch
from pytorch_metric_learning import distances, reducers, regularizers

from runner.config import ConfigError, LossConfig, MinerConfig, suggest
from runner.losses.names import LOSS_INPUT, MINER_OUTPUT, classes_of, loss_class, miner_class


# Keyword arguments whose value is a PML object, given as a class name or {name: ..., <kwargs>}.
OBJECT_KWARGS = {"distance": distances, "reducer": reducers,
                 "embedding_regularizer": regularizers, "weight_regularizer": regularizers}

# Never from a config: a callable, and an argument each GenericPairLoss subclass sets itself.
_NOT_CONFIGURABLE = {"weight_init_func", "mat_based_loss"}


@functools.lru_cache(maxsize=None)
def _init_params(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword arguments of cls.__init__ plus those its bases receive through **kwargs."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass in (torch.nn.Module, object):
            break
        if "__init__" not in vars(klass):
            continue
        sig = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in sig:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(p.name, p)  # the most derived default wins
        if not any(p.kind is p.VAR_KEYWORD for p in sig):
            break
    return params


def _required(cls: type) -> list[str]:
    return [n for n, p in _init_params(cls).items() if p.default is p.empty and n not in _NOT_CONFIGURABLE]


def _type_problem(default: Any, value: Any) -> Optional[str]:
    """Numbers and flags must stay numbers and flags; other values are PML's to check."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "a number"
    return None


def _check_params(key: str, cls: type, params: dict, fixed: dict) -> dict:
    """Validate params against cls's keyword arguments; build object-valued ones."""
    allowed = sorted(n for n in _init_params(cls) if n not in _NOT_CONFIGURABLE and n not in fixed)
    kwargs = {}
    for name, value in params.items():
        if name in fixed:
            raise ConfigError(f"{key}.{name}", value, fixed[name])
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", value, f"one of {', '.join(allowed)}{suggest(name, allowed)}")
        problem = _type_problem(_init_params(cls)[name].default, value)
        if problem:
            raise ConfigError(f"{key}.{name}", value, problem)
        if name in OBJECT_KWARGS and value is not None:
            value = _build_object(f"{key}.{name}", value, OBJECT_KWARGS[name])
        kwargs[name] = value
    return kwargs


def _build_object(key: str, value: Any, module: ModuleType) -> torch.nn.Module:
    """`CosineSimilarity` or `{name: LpDistance, power: 2}` -> the PML object."""
    kind = module.__name__.rsplit(".", 1)[-1]
    if isinstance(value, str):
        name, params = value, {}
    elif isinstance(value, dict) and "name" in value:
        name, params = value["name"], {k: v for k, v in value.items() if k != "name"}
    else:
        raise ConfigError(key, value, f"a class name from pytorch_metric_learning.{kind} or a mapping with a name key")
    classes = {n: c for n, c in classes_of(module, {}).items() if not n.startswith("Base")}
    if name not in classes:
        raise ConfigError(key, name, f"one of {', '.join(sorted(classes))}{suggest(name, classes)}")
    return _construct(key, classes[name], _check_params(key, classes[name], params, {}))


def _check_required(key: str, cls: type, kwargs: dict) -> None:
    missing = [n for n in _required(cls) if n not in kwargs]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}", None, f"a value: {cls.__name__} requires it")


def _construct(key: str, cls: type, kwargs: dict) -> torch.nn.Module:
    _check_required(key, cls, kwargs)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as e:  # PML validates in __init__ (asserts included)
        raise ConfigError(key, kwargs, f"arguments {cls.__name__} accepts ({type(e).__name__}: {e})") from e


def _margin_target(cls: type, section: str) -> Optional[str]:
    params = _init_params(cls)
    if "margin" in params:
        return "margin"
    return "neg_margin" if section == "loss" and "neg_margin" in params else None


def _with_margin(section: str, cls: type, cfg: LossConfig | MinerConfig, fixed: dict) -> dict:
    """cfg.params checked, plus cfg.margin under the class's margin argument."""
    target = _margin_target(cls, section)
    if target:
        fixed = {**fixed, target: f"left out: set {section}.margin instead"}
    kwargs = _check_params(f"{section}.params", cls, cfg.params, fixed)
    if cfg.margin is not None and target is None:
        raise ConfigError(f"{section}.margin", cfg.margin, f"null: {cls.__name__} has no margin parameter")
    if cfg.margin is None and target in _required(cls):
        raise ConfigError(f"{section}.margin", None, f"a number: {cls.__name__} requires a margin")
    return kwargs if cfg.margin is None else {**kwargs, target: cfg.margin}


def _loss_kwargs(cfg: LossConfig, num_classes: Optional[int], embedding_size: Optional[int]) -> tuple[type, dict]:
    cls = loss_class(cfg.name)
    sizes = {"num_classes": num_classes, "embedding_size": embedding_size, "descriptors_dim": embedding_size}
    filled = {n: v for n, v in sizes.items() if n in _required(cls)}
    kwargs = _with_margin("loss", cls, cfg, dict.fromkeys(filled, "left out: the runner fills it in from the data"))
    return cls, {**kwargs, **filled}


def build_loss(cfg: LossConfig, num_classes: Optional[int] = None,
               embedding_size: Optional[int] = None) -> torch.nn.Module:
    """Build the loss a LossConfig names.

    `cfg.margin` goes to the class's `margin` argument, or to `neg_margin` for classes
    with neg_margin but no margin (ContrastiveLoss, LiftedStructureLoss; pos_margin
    keeps PML's default 0); null keeps the class default; a margin for a class with
    neither is a ConfigError. Its units are the class's (ArcFaceLoss: degrees).
    `cfg.params` are the other keyword arguments, bases' ones included (distance,
    reducer, embedding_regularizer, ...; objects by class name, see OBJECT_KWARGS).

    Args:
        num_classes, embedding_size: filled in where the class requires them (proxy and
            classifier losses such as ArcFaceLoss, ProxyAnchorLoss, SoftTripleLoss);
            such losses have parameters, which need a place in the optimizer.
    """
    cls, kwargs = _loss_kwargs(cfg, num_classes, embedding_size)
    for name, value in kwargs.items():
        if value is None and name in ("num_classes", "embedding_size", "descriptors_dim"):
            raise ValueError(f"{cls.__name__} needs {name}: pass num_classes and embedding_size to build_loss()")
    return _construct("loss.params", cls, kwargs)


def build_miner(cfg: MinerConfig) -> Optional[torch.nn.Module]:
    """Build the miner a MinerConfig names, or None for no mining.

    `cfg.margin` goes to the miner's `margin` argument (TripletMarginMiner); a margin
    for a miner without one (PairMarginMiner: use params pos_margin/neg_margin) is a
    ConfigError. `cfg.params` are checked as in build_loss.
    """
    cls = miner_class(cfg.name)
    if cls is None:
        return None
    return _construct("miner.params", cls, _with_margin("miner", cls, cfg, {}))


def resolve_miner_margin(miner_cfg: MinerConfig, loss_cfg: LossConfig) -> Optional[float]:
    """The miner margin to store: its own, else the loss margin when the miner has a margin.

    Called by config.resolve, so it also checks both names and margins (ConfigError).
    """
    loss_cls = loss_class(loss_cfg.name)
    if loss_cfg.margin is not None and _margin_target(loss_cls, "loss") is None:
        raise ConfigError("loss.margin", loss_cfg.margin, f"null: {loss_cls.__name__} has no margin parameter")
    cls = miner_class(miner_cfg.name)
    if cls is None:
        return None
    has_margin = _margin_target(cls, "miner") is not None
    if miner_cfg.margin is not None:
        if not has_margin:
            raise ConfigError("miner.margin", miner_cfg.margin, f"null: {cls.__name__} has no margin parameter")
        return miner_cfg.margin
    return loss_cfg.margin if has_margin else None


def check_compatible(loss_cfg: LossConfig, miner_cfg: MinerConfig) -> None:
    """Check names, margins and params as the builders do, and that the loss can use the miner.

    Triplet and pair losses take either kind of tuple (PML converts, see LOSS_INPUT).
    Losses that reject an indices_tuple, and proxy/classifier losses, which would only
    turn it into per-sample weights, take no miner (the latter is this project's rule,
    not PML's): ConfigError('miner.name').
    """
    loss_cls, kwargs = _loss_kwargs(loss_cfg, 0, 0)  # sizes are the data's; 0 stands in
    _check_required("loss.params", loss_cls, kwargs)
    miner_cls = miner_class(miner_cfg.name)
    if miner_cls is not None:
        _check_required("miner.params", miner_cls, _with_margin("miner", miner_cls, miner_cfg, {}))
    kind = LOSS_INPUT.get(loss_cls.__name__)
    if miner_cls is None or kind in ("pairs", "triplets", None):
        return
    output = MINER_OUTPUT.get(miner_cls.__name__, "tuples")
    why = {"weights": "would only use them as per-sample weights (lmu.convert_to_weights)",
           "none": "rejects an indices_tuple"}[kind]
    raise ConfigError("miner.name", miner_cfg.name,
                      f"null: {miner_cls.__name__} returns {output} and {loss_cls.__name__} {why}")


def needs_positive_pairs(loss_name: str) -> bool:
    """Whether a batch needs two samples of a class; proxy/classifier losses do not."""
    return "num_classes" not in _required(loss_class(loss_name))
