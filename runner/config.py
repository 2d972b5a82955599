"""Typed run configuration: one frozen dataclass per concern, and `run_id`.

A `RunConfig` is complete and resolved: every default is filled in before it is
hashed, so the same settings always give the same `run_id` and any change (the
seed included) gives a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(ValueError):
    """A config value is invalid. The message is one line naming the key."""

    def __init__(self, key: str, value: Any, expected: str):
        if not (str(key).isprintable() and str(key).strip()):  # a fuzzed or mistyped key: keep it one line
            key = repr(key)
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key}: got {value!r}, expected {expected}")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(key, value, expected)


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    """Data set: digits (embedded), mnist, fashion_mnist, folder, lfw, signs (synthetic), h5 (packed)."""
    root: Optional[str] = None
    """Directory (or file, for h5) holding the data set; unused for digits and signs."""
    split: str = "stratified"
    """stratified: per-class train/test split; class_disjoint: test classes unseen in training."""
    test_fraction: float = 0.2
    """Fraction of each class (stratified) or of the classes (class_disjoint) held out for test."""
    val_fraction: float = 0.0
    """Fraction of the training part carved out as a validation split (used by runner.tune)."""
    n_per_class: Optional[int] = None
    """Keep at most this many training images per class (small-data studies); None keeps all."""
    min_images_per_class: int = 2
    """Drop classes with fewer images than this before splitting."""
    image_size: Optional[int] = None
    """Resize images to this square size; None keeps the data set's native size."""
    augment: str = "auto"
    """auto (per data set family), none, light, or strong (random affine + colour jitter)."""
    hflip: Optional[bool] = None
    """Random horizontal flips; None picks per data set (never for digits or signs)."""
    split_seed: int = 0
    """Seed of the train/test split, kept apart from the training seed so seeds share a split."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "small_cnn"
    """Trunk by name: small_cnn, resnet18, resnet50, vgg16."""
    width: int = 32
    """Channels of the first small_cnn block (doubled per block)."""
    norm: str = "batch"
    """Normalisation layers of small_cnn: batch, group or none (group/none keep DDP exact)."""
    pretrained: Optional[str] = None
    """Path to local trunk weights (loaded with weights_only=True); never downloaded."""
    freeze_trunk: bool = False
    """Train only the embedding head."""


@dataclass(frozen=True)
class EmbeddingConfig:
    dim: int = 32
    """Size of the embedding."""
    normalize: bool = True
    """L2-normalise embeddings (distances then live on the unit sphere)."""


@dataclass(frozen=True)
class LossConfig:
    name: str = "TripletMarginLoss"
    """A pytorch-metric-learning loss class name, an alias (triplet, contrastive) or DBLLoss."""
    margin: Optional[float] = 0.2
    """The loss's margin: `margin`, or `neg_margin` for ContrastiveLoss; None keeps PML's default."""
    params: dict = field(default_factory=dict)
    """Other keyword arguments of the loss class."""


@dataclass(frozen=True)
class MinerConfig:
    name: Optional[str] = "TripletMarginMiner"
    """A pytorch-metric-learning miner class name, or None for no mining (all pairs/triplets)."""
    margin: Optional[float] = None
    """The miner's margin; None takes the loss margin when the miner has one."""
    params: dict = field(default_factory=lambda: {"type_of_triplets": "semihard"})
    """Other keyword arguments of the miner class."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    """Passes over the training split (an epoch is len(train) // global batch steps)."""
    min_steps: int = 0
    """Train at least this many optimiser steps: epochs rise to ceil(min_steps / steps per epoch).
    Tiny data sets have one step per epoch; a step budget keeps them from stopping untrained."""
    batch_size: int = 128
    """Samples per batch on each rank (global batch = batch_size × world_size)."""
    samples_per_class: int = 4
    """K of the P×K sampler; P = batch_size // K classes per batch."""
    sampler: str = "pk"
    """pk: class-balanced P×K batches; random: plain shuffled batches."""
    optimizer: str = "adamw"
    """adam, adamw or sgd."""
    lr: float = 2e-3
    """Peak learning rate."""
    weight_decay: float = 5e-4
    """Decoupled weight decay (adamw) or L2 (adam, sgd)."""
    schedule: str = "cosine"
    """cosine: linear warm-up then cosine decay to zero; constant: warm-up then flat."""
    warmup_fraction: float = 0.05
    """Fraction of all steps spent in linear warm-up."""
    grad_clip: Optional[float] = None
    """Clip the gradient norm to this value; None disables clipping."""
    save_every: int = 5
    """Store train/test embeddings every this many epochs (epoch 0 and the last are always stored)."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    amp: bool = False
    """bf16 autocast on CUDA."""
    num_threads: int = 0
    """torch CPU threads; 0 leaves torch's default."""
    deterministic: bool = True
    """Ask torch for deterministic kernels (exact resume; slightly slower on GPU)."""


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    miner: MinerConfig = field(default_factory=MinerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    """Seed for model init, sampler, augmentation (python/numpy/torch)."""

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate(cfg: RunConfig) -> None:
    """Checks that need no data and no imports of torch or PML."""
    d, m, e, t = cfg.data, cfg.model, cfg.embedding, cfg.train
    _check(0.0 < d.test_fraction < 1.0, "data.test_fraction", d.test_fraction, "a number in (0, 1)")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "a number in [0, 1)")
    _check(d.split in ("stratified", "class_disjoint"), "data.split", d.split, "stratified or class_disjoint")
    _check(d.n_per_class is None or d.n_per_class >= 2, "data.n_per_class", d.n_per_class, "an integer >= 2 or null")
    _check(d.min_images_per_class >= 2, "data.min_images_per_class", d.min_images_per_class, "an integer >= 2")
    _check(d.image_size is None or d.image_size >= 8, "data.image_size", d.image_size, "an integer >= 8 or null")
    _check(d.augment in ("auto", "none", "light", "strong"), "data.augment", d.augment, "auto, none, light or strong")
    _check(m.norm in ("batch", "group", "none"), "model.norm", m.norm, "batch, group or none")
    _check(m.width >= 4, "model.width", m.width, "an integer >= 4")
    _check(e.dim >= 1, "embedding.dim", e.dim, "an integer >= 1")
    _check(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    _check(t.min_steps >= 0, "train.min_steps", t.min_steps, "an integer >= 0")
    _check(t.samples_per_class >= 1, "train.samples_per_class", t.samples_per_class, "an integer >= 1")
    _check(t.batch_size >= 2, "train.batch_size", t.batch_size, "an integer >= 2")
    _check(t.sampler in ("pk", "random"), "train.sampler", t.sampler, "pk or random")
    if t.sampler == "pk":
        _check(t.batch_size % t.samples_per_class == 0 and t.batch_size // t.samples_per_class >= 2,
               "train.batch_size", t.batch_size,
               f"a multiple of train.samples_per_class ({t.samples_per_class}) with at least 2 classes per batch")
        _check(t.samples_per_class >= 2, "train.samples_per_class", t.samples_per_class,
               "at least 2 (a P×K batch needs positive pairs)")
        _check(d.n_per_class is None or d.n_per_class >= t.samples_per_class, "data.n_per_class", d.n_per_class,
               f"null or at least train.samples_per_class ({t.samples_per_class}): "
               "classes with fewer than K images would only repeat them")
    _check(t.optimizer in ("adam", "adamw", "sgd"), "train.optimizer", t.optimizer, "adam, adamw or sgd")
    _check(t.lr > 0, "train.lr", t.lr, "a number > 0")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    _check(t.schedule in ("cosine", "constant"), "train.schedule", t.schedule, "cosine or constant")
    _check(0 <= t.warmup_fraction < 1, "train.warmup_fraction", t.warmup_fraction, "a number in [0, 1)")
    _check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", t.grad_clip, "a number > 0 or null")
    _check(t.save_every >= 1, "train.save_every", t.save_every, "an integer >= 1")
    _check(t.device in ("auto", "cpu", "cuda"), "train.device", t.device, "auto, cpu or cuda")
    _check(t.num_threads >= 0, "train.num_threads", t.num_threads, "an integer >= 0")
    for key, margin in (("loss.margin", cfg.loss.margin), ("miner.margin", cfg.miner.margin)):
        _check(margin is None or margin >= 0, key, margin, "a number >= 0 or null")


# ---------------------------------------------------------------- dict <-> dataclass

def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


def _describe(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union:
        return " or ".join("null" if a is type(None) else _TYPE_WORDS.get(a, str(a)) for a in args)
    return _TYPE_WORDS.get(tp, str(tp))


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", data, "a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            from difflib import get_close_matches
            close = get_close_matches(str(key), names, n=1)
            hint = f"one of {', '.join(names)}" + (f" (did you mean {close[0]}?)" if close else "")
            raise ConfigError(f"{prefix}{key}", value, hint)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
            continue
        if tp is float and _type_ok(value, int):
            value = float(value)
        if typing.get_origin(tp) is typing.Union and float in typing.get_args(tp) and _type_ok(value, int):
            value = float(value)
        if not _type_ok(value, tp):
            raise ConfigError(f"{prefix}{key}", value, _describe(tp))
        kwargs[key] = value
    return cls(**kwargs)


def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base` (mappings merge, other values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "params":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_layer(base: dict, override: dict) -> dict:
    """Merge one layer of settings (defaults <- spec <- --set) into `base`.

    Naming another loss or miner starts that section afresh (margin null, no params):
    the previous class's keyword arguments rarely fit the new one.
    """
    base = dict(base)
    for section in ("loss", "miner"):
        new = override.get(section)
        if isinstance(new, dict) and "name" in new and new["name"] != base.get(section, {}).get("name"):
            base[section] = {"name": new["name"], "margin": None, "params": {}}
    return merge(base, override)


def resolve(*layers: dict) -> RunConfig:
    """Build a complete RunConfig from (partial) nested dicts laid over the defaults.

    Derived values are filled in here, before hashing: a miner margin of null takes
    the loss margin when the miner has a margin parameter.
    """
    data = RunConfig().to_dict()
    for layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError("config", layer, "a mapping")
        data = merge_layer(data, layer)
    cfg = _build(RunConfig, data, "")
    from runner.losses import loss_class, miner_class, resolve_miner_margin  # PML only when resolving
    miner_margin = resolve_miner_margin(cfg.miner, cfg.loss)
    miner_cls = miner_class(cfg.miner.name)
    # aliases (triplet, contrastive, none) resolve to class names: one run, one run_id
    loss = dataclasses.replace(cfg.loss, name=loss_class(cfg.loss.name).__name__)
    miner = dataclasses.replace(cfg.miner, name=miner_cls.__name__ if miner_cls else None, margin=miner_margin)
    return dataclasses.replace(cfg, loss=loss, miner=miner)


def from_dict(data: dict) -> RunConfig:
    """Rebuild an already resolved config (as stored in run.h5) without re-resolving."""
    return _build(RunConfig, data, "")


def canonical_json(cfg: RunConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))


def run_id(cfg: RunConfig) -> str:
    """Short stable hash of the resolved config: same config, same id."""
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:12]
