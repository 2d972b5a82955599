"""Typed run configuration: one frozen dataclass per concern, and `run_id`.

A `RunConfig` is complete and resolved (runner.spec.resolve fills in every default and
PML class name). `run_id` hashes its `identity`: the settings that differ from the
defaults, so the same settings always give the same id, any change that can alter
results (the seed included) gives a new one, and a config field added later with a
default leaves existing ids alone.
"""
# long: every config key with its docstring lives here, the one place to read them all;
# the dataclasses and their checks are most of the file.

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import re
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


class ConfigErrors(ConfigError):
    """Several distinct problems (a grid's runs): one ConfigError line each, the first one's key.

    A command prints every line as `error: <line>` and exits 2.
    """

    def __init__(self, errors: list[ConfigError]):
        first = errors[0]
        super().__init__(first.key, first.value, first.expected)
        self.errors = list(errors)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return self.args[0]

    @staticmethod
    def of(errors: list[ConfigError]) -> ConfigError:
        """The one error itself, or a ConfigErrors of several."""
        return errors[0] if len(errors) == 1 else ConfigErrors(errors)


def suggest(name: Any, choices) -> str:
    """' (did you mean X?)' for the closest of `choices` (case-insensitive), or ''."""
    lowered = {str(c).lower(): c for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def flatten(d: dict, prefix: str = "") -> dict:
    """{'loss': {'name': 'x', 'params': {...}}} -> {'loss.name': 'x', 'loss.params': {...}}.

    A `params` mapping stays one value: its keys are a PML class's arguments, not config
    fields, and two runs differ in params when the mappings differ.
    """
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "params":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(key, value, expected)


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    """Data set: digits (embedded), mnist, fashion_mnist, folder, lfw, signs (synthetic), cub, cars, sop,
    inshop (the metric-learning benchmarks, as distributed), h5 (packed)."""
    root: Optional[str] = None
    """Directory (or file, for h5) holding the data set; unused for digits and signs."""
    split: str = "stratified"
    """stratified: per-class train/test split; class_disjoint: test classes unseen in training;
    official: the data set's own split (MNIST train/t10k, LFW View 1 people, CUB/Cars/SOP class
    halves, In-Shop train vs query + gallery)."""
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
    group_by: Optional[str] = None
    """A regular expression with one capture group, searched in each image's file name (e.g. ^(\\d+)_
    for <track>_<frame>.ppm): images of a class with the same captured text are one group, kept on
    one side of the stratified train/test and train/val cuts. None: images are split one by one."""
    test_classes: Optional[tuple[str, ...]] = None
    """class_disjoint: the class names held out for test (e.g. ["5", "6", "7", "8", "9"] for digits 0-4
    vs 5-9), the rest trained on; None holds out round(test_fraction · classes) drawn from split_seed."""
    storage: str = "memory"
    """memory: decode every image once into one uint8 tensor (the default; small sets); stream: a
    DataLoader decodes each batch in worker processes from the image files or a packed HDF5, with
    torchvision transforms (docs/streaming.md); auto: stream when the decoded set would take more than
    half the available memory per process, and say which in the log."""
    num_workers: int = 2
    """DataLoader worker processes in stream mode (0: decode in the training process). Batches and crops
    are the same for any number, so it is left out of the run_id."""


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
    freeze_bn: bool = False
    """Keep the trunk's BatchNorm layers fixed (eval-mode statistics, no affine updates), as the
    metric-learning recipes do with pretrained trunks and batches of 32 classes × 4."""


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
    """Passes over the training split (an epoch is len(train) // global batch steps, or
    train.steps_per_epoch when that is smaller)."""
    steps_per_epoch: Optional[int] = None
    """At most this many optimiser steps per epoch; None: a full pass over the training split.
    Short epochs on a big set (SOP's 59,551 training images are 465 steps of 128): evaluation, stored
    embeddings, checkpoints and the learning-rate schedule then count these epochs."""
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
    trunk_lr: Optional[float] = None
    """Peak learning rate of the trunk's parameters (an optimiser parameter group of its own);
    None: train.lr for every parameter. The head and the loss's parameters always use train.lr."""
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
    eval_every: int = 0
    """Evaluate (embed the splits, score the metrics) every this many epochs; epoch 0, the last
    epoch and every stored epoch (save_every) are always evaluated. 0 (auto): only those epochs
    (what run.h5 stores and the report draws), except in a Tune search, whose scheduler decides on
    every epoch's scores: there every epoch while the splits hold at most 20,000 images (scoring a
    70k set costs about as much as an epoch of training). 1: per-epoch metric curves. Training,
    the per-step curves and the stored embeddings do not depend on it."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    amp: bool = False
    """bf16 autocast on CUDA."""
    num_threads: int = 0
    """torch CPU threads; 0 leaves torch's default."""
    channels_last: Optional[bool] = None
    """Hold the model and the batches in channels_last memory layout (faster convolutions on CPU
    and CUDA); None (auto) turns it on for the conv backbones (all built-in ones). Embeddings then
    differ by ~1e-6 relative from the contiguous layout; run.h5 records the layout (memory_format)."""
    compile: bool = False
    """torch.compile the model (for long runs: the first step compiles it, its time is logged and
    stored as compile_s in run.h5)."""
    deterministic: bool = True
    """Ask torch for deterministic kernels (exact resume; slightly slower on GPU)."""


@dataclass(frozen=True)
class EvalConfig:
    recall_at: tuple[int, ...] = (1, 2, 4, 8)
    """K of the Recall@K metrics (recall_at_<K>); the protocol per split is in docs/evaluation.md."""
    clustering: bool = True
    """NMI and AMI of k-means (k = classes) on the test queries. Each k-means iteration costs
    queries × classes × dim: hours on CPU for SOP's 60k test images of 11k products, so the
    SOP and In-Shop specs turn it off (their metrics are Recall@K and MAP@R)."""


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    miner: MinerConfig = field(default_factory=MinerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    """Seed for model init, sampler, augmentation (python/numpy/torch)."""

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        """Nested dicts as run.h5 and YAML hold them (tuples as lists)."""
        return json.loads(json.dumps(_fields_of(self)))


def _fields_of(obj: Any) -> Any:
    """dataclasses.asdict without its deep copies (JSON copies the result anyway): 10,000 configs of a
    grid are hashed twice on every relaunch, and asdict's copies were most of that time."""
    if dataclasses.is_dataclass(obj):
        # configs are frozen and the runs of a grid share their sections (_build_section): each
        # section's dict is made once and kept on it; callers copy it (to_dict goes through JSON)
        fields = obj.__dict__.get("_fields")
        if fields is None:
            fields = {f.name: _fields_of(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            obj.__dict__["_fields"] = fields
        return fields
    if isinstance(obj, (list, tuple)):
        return [_fields_of(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _fields_of(v) for k, v in obj.items()}
    return obj


def validate(cfg: RunConfig) -> None:
    """Checks that need no data and no imports of torch or PML."""
    d, m, e, t = cfg.data, cfg.model, cfg.embedding, cfg.train
    _check(0.0 < d.test_fraction < 1.0, "data.test_fraction", d.test_fraction, "a number in (0, 1)")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "a number in [0, 1)")
    _check(d.split in ("stratified", "class_disjoint", "official"), "data.split", d.split,
           "stratified, class_disjoint or official")
    if d.group_by is not None:
        check_group_by(d.group_by)
    if d.test_classes is not None:
        _check(d.split == "class_disjoint", "data.test_classes", list(d.test_classes),
               f"null unless data.split is class_disjoint (it is {d.split})")
        _check(len(d.test_classes) >= 1 and len(set(d.test_classes)) == len(d.test_classes), "data.test_classes",
               list(d.test_classes), "a list of distinct class names, at least one")
    _check(d.n_per_class is None or d.n_per_class >= 2, "data.n_per_class", d.n_per_class, "an integer >= 2 or null")
    _check(d.min_images_per_class >= 2, "data.min_images_per_class", d.min_images_per_class, "an integer >= 2")
    _check(d.image_size is None or d.image_size >= 8, "data.image_size", d.image_size, "an integer >= 8 or null")
    _check(d.storage in ("memory", "stream", "auto"), "data.storage", d.storage, "memory, stream or auto")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "an integer >= 0")
    _check(d.augment in ("auto", "none", "light", "strong"), "data.augment", d.augment, "auto, none, light or strong")
    _check(m.norm in ("batch", "group", "none"), "model.norm", m.norm, "batch, group or none")
    _check(m.width >= 4, "model.width", m.width, "an integer >= 4")
    _check(e.dim >= 1, "embedding.dim", e.dim, "an integer >= 1")
    _check(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    _check(t.min_steps >= 0, "train.min_steps", t.min_steps, "an integer >= 0")
    _check(t.steps_per_epoch is None or t.steps_per_epoch >= 1, "train.steps_per_epoch", t.steps_per_epoch,
           "an integer >= 1 or null")
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
    _check(t.trunk_lr is None or t.trunk_lr > 0, "train.trunk_lr", t.trunk_lr, "a number > 0 or null")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    _check(t.schedule in ("cosine", "constant"), "train.schedule", t.schedule, "cosine or constant")
    _check(0 <= t.warmup_fraction < 1, "train.warmup_fraction", t.warmup_fraction, "a number in [0, 1)")
    _check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", t.grad_clip, "a number > 0 or null")
    _check(t.save_every >= 1, "train.save_every", t.save_every, "an integer >= 1")
    _check(t.eval_every >= 0, "train.eval_every", t.eval_every, "an integer >= 0 (0: auto)")
    _check(t.device in ("auto", "cpu", "cuda"), "train.device", t.device, "auto, cpu or cuda")
    _check(t.num_threads >= 0, "train.num_threads", t.num_threads, "an integer >= 0")
    k = cfg.eval.recall_at
    _check(all(a < b for a, b in zip(k, k[1:])) and all(x >= 1 for x in k), "eval.recall_at", list(k),
           "a list of increasing integers >= 1")
    for key, margin in (("loss.margin", cfg.loss.margin), ("miner.margin", cfg.miner.margin)):
        _check(margin is None or margin >= 0, key, margin, "a number >= 0 or null")


def check_group_by(pattern: str) -> None:
    """data.group_by compiles and has one capture group, or a one-line ConfigError."""
    try:
        groups = re.compile(pattern).groups
    except re.error as err:
        raise ConfigError("data.group_by", pattern, f"a regular expression ({err})") from None
    _check(groups == 1, "data.group_by", pattern, f"a regular expression with exactly one capture group (has {groups})")


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
    if origin is tuple:  # a list in YAML and JSON
        return isinstance(value, (list, tuple)) and all(_type_ok(v, typing.get_args(tp)[0]) for v in value)
    return isinstance(value, tp)


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


def _describe(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union:
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(args[0], str(args[0]))
    return _TYPE_WORDS.get(tp, str(tp))


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict:
    # evaluating the string annotations costs more than the rest of building a config
    return typing.get_type_hints(cls)


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """A config dataclass from a nested dict, type-checked field by field (one-line ConfigError)."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", data, "a mapping")
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{prefix}{key}", value, f"one of {', '.join(names)}{suggest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build_section(tp, value, f"{prefix}{key}.")
            continue
        if tp is float and _type_ok(value, int):
            value = float(value)
        if typing.get_origin(tp) is typing.Union and float in typing.get_args(tp) and _type_ok(value, int):
            value = float(value)
        if not _type_ok(value, tp):
            raise ConfigError(f"{prefix}{key}", value, _describe(tp))
        # a list for a tuple field, or for an Optional tuple one: frozen configs stay hashable
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


_SECTIONS: dict = {}
"""Built sections by (class, prefix, JSON of the dict): the runs of a grid share most of theirs."""


def _build_section(cls: type, data: Any, prefix: str) -> Any:
    """build() of a nested section, reused when the same dict was built before: a section is a frozen
    dataclass, so runs may share one (resolving 10,000 runs otherwise type-checks the same sections
    10,000 times). Values JSON cannot write (or unhashable input) are built afresh."""
    try:
        key = (cls, prefix, json.dumps(data, sort_keys=True))
    except (TypeError, ValueError):
        return build(cls, data, prefix)
    if key not in _SECTIONS:
        if len(_SECTIONS) > 100_000:  # bounded: a long-lived process (Ray, a notebook) resolves many configs
            _SECTIONS.clear()
        _SECTIONS[key] = build(cls, data, prefix)
    return _SECTIONS[key]


def from_dict(data: dict) -> RunConfig:
    """Rebuild an already resolved config (as stored in run.h5) without re-resolving."""
    return build(RunConfig, data)


ID_SCHEME = 2
"""Version of the run_id scheme, stored in run.h5 (1: hash of the whole config; 2: of `identity`)."""
EXECUTION_ONLY = ("train.num_threads", "data.num_workers")
"""Settings that change how fast a run goes, never its results: left out of the run_id."""


def identity(cfg: RunConfig) -> dict:
    """What names a run: the settings that differ from the defaults, less EXECUTION_ONLY ones.

    A new config field with a default leaves every existing run_id as it was, and so does
    a change of thread count. A default that changes moves the ids of runs that rely on it
    (tests/test_run_ids.py pins the ids of jobs/*.yaml, so such a change is seen).
    """
    default = _default_flat(type(cfg))
    return {k: v for k, v in flatten(cfg.to_dict()).items()
            if k not in EXECUTION_ONLY and (k not in default or v != default[k])}


@functools.lru_cache(maxsize=None)
def _default_flat(cls: type) -> dict:
    """The flattened defaults of a config class (RunConfig, or a later version of it)."""
    return flatten(cls().to_dict())


def canonical_json(cfg: RunConfig) -> str:
    return json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"))


def run_id(cfg: RunConfig) -> str:
    """Short stable hash of the resolved config's identity: same settings, same id.

    Kept on the instance once computed: a RunConfig is frozen (dataclasses.replace makes a new
    one), and a launcher asks for the id of each of 10,000 runs several times.
    """
    rid = cfg.__dict__.get("_run_id")
    if rid is None:
        rid = hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:12]
        cfg.__dict__["_run_id"] = rid  # not a field: eq, asdict and to_dict never see it
    return rid


def legacy_run_id(config: dict) -> str:
    """The scheme-1 id: a hash of the whole config dict (run.h5 files without `id_scheme`)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
