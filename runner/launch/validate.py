"""Checks of resolved runs that need no training, made before anything is queued or trained.

`validate_runs(runs, placement)` puts every run of a grid through every check and returns
each distinct problem once, with the runs it affects; `check_runs` raises them as one
ConfigErrors (a command prints a line per problem and exits 2). The checks:

  loss × miner        the builders' argument checks and whether the loss can use the miner
  data                name, data.root and the files the loader needs (listings and headers
                      only), classes left after data.min_images_per_class, the split
  model.backbone      a known trunk (with a close match)
  image size          the trunk, built on the meta device, forwards the data's image shape
  model.pretrained    exists, loads with weights_only=True, fits the trunk's keys and shapes
  batch vs classes    the P×K sampler finds 2 classes per rank
  device              train.device against the GPUs a run will have

Each check is cached on the part of the config it reads (the data section, the trunk and
image shape, the weights file, ...), so a grid of thousands of runs builds one meta model per
distinct trunk × image shape and reads each data set's headers once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from runner.config import ConfigError, ConfigErrors, RunConfig
from runner.data import DataShape, describe_data, n_train_classes
from runner.launch.many import array_ranges
from runner.losses import check_compatible
from runner.spec import ExperimentSpec, expand_grid
from runner.training.models import check_backbone, check_input_size, check_pretrained


@dataclass(frozen=True)
class Placement:
    """Where each run will run: what the device and sampler checks compare against."""
    ranks: int = 1
    """DDP ranks (tasks) per run."""
    gpus: Optional[int] = None
    """GPUs each run is given; None: the GPUs visible to this process (the run trains here)."""
    gpus_flag: str = "--gpus-per-run"
    """The option that set `gpus`, named in messages."""

    def visible_gpus(self) -> int:
        return torch.cuda.device_count() if self.gpus is None else self.gpus


Problem = tuple[ConfigError, list[int]]
"""One distinct problem and the indices of the runs it affects."""


def validate_runs(runs: list[RunConfig], placement: Placement = Placement()) -> list[Problem]:
    """Every distinct problem of `runs`, in the order first met, with the runs each affects."""
    cache: dict = {}
    found: dict[str, Problem] = {}
    for i, cfg in enumerate(runs):
        for err in run_problems(cfg, placement, cache):
            found.setdefault(str(err), (err, []))[1].append(i)
    return list(found.values())


def check_runs(runs: list[RunConfig], placement: Placement = Placement(),
               names: Optional[list[str]] = None) -> None:
    """Raise every problem of `runs` as one ConfigErrors, each line naming its runs.

    Lines end in `[runs 0-3,7]` (indices into runs), `[in NAME, ...]` with `names`, or
    nothing when runs holds one run.
    """
    problems = validate_runs(runs, placement)
    if not problems:
        return
    errors = []
    for err, where in problems:
        if names is not None:
            suffix = f" [in {', '.join(names[i] for i in where[:4])}{', ...' if len(where) > 4 else ''}]"
        else:
            suffix = "" if len(runs) == 1 else f" [run{'s' if len(where) > 1 else ''} {array_ranges(where)}]"
        errors.append(ConfigError(err.key, err.value, err.expected + suffix))
    raise ConfigErrors.of(errors)


def validate_run(cfg: RunConfig, placement: Placement = Placement()) -> None:
    """check_runs for one run (runner.train): its problems, one line each, without run indices."""
    check_runs([cfg], placement)


def expand_checked(spec: ExperimentSpec, placement: Placement = Placement()) -> list[RunConfig]:
    """expand_grid, then check_runs on all of its runs: what every launcher queues."""
    runs = expand_grid(spec)
    check_runs(runs, placement)
    return runs


_FAILED = object()
"""What a check in run_problems returns when it found a problem."""


def run_problems(cfg: RunConfig, placement: Placement, cache: dict) -> list[ConfigError]:
    """The problems of one run; `cache` keeps each check's outcome per distinct input."""
    problems: list[ConfigError] = []

    def check(fn: Callable, *args) -> Any:
        key = (fn.__name__, _key(args))
        if key not in cache:
            try:
                cache[key] = (fn(*args), None)
            except ConfigError as exc:
                cache[key] = (_FAILED, exc)
        value, err = cache[key]
        if err is not None:
            problems.append(err)
        return value

    check(check_compatible, cfg.loss, cfg.miner)
    check(check_device, cfg.train.device, placement)
    shape = check(describe_data, cfg.data)
    known_trunk = check(check_backbone, cfg.model.backbone) is not _FAILED
    if shape is _FAILED:
        return problems
    check(check_classes_per_rank, cfg.data, cfg.train.batch_size, cfg.train.samples_per_class,
          cfg.train.sampler, shape.class_counts, placement.ranks)
    if known_trunk:
        trunk = dataclasses.replace(cfg.model, pretrained=None, freeze_trunk=False)  # the architecture only
        check(check_input_size, trunk, shape.channels, shape.height, shape.width, _source(cfg, shape))
        if cfg.model.pretrained:
            check(check_pretrained, cfg.model, shape.channels, shape.width)
    return problems


def _source(cfg: RunConfig, shape: DataShape) -> str:
    native = "" if cfg.data.image_size else ", their own size"
    return f"{cfg.data.name} images are {shape.height}×{shape.width}{native}"


def check_classes_per_rank(data, batch_size: int, samples_per_class: int, sampler: str,
                           class_counts: tuple, ranks: int) -> None:
    """The P×K sampler needs at least 2 training classes per rank in every batch (PKSampler)."""
    n_train = n_train_classes(len(class_counts), data)
    if sampler != "pk":
        return
    per_rank = min(batch_size // samples_per_class, n_train // ranks)
    if per_rank < 2:
        raise ConfigError("train.batch_size", batch_size,
                          f"a P×K batch of at least 2 classes per rank: {n_train} training classes over "
                          f"{ranks} rank(s) give {n_train // ranks} (fewer ranks, or more classes)")


def check_device(device: str, placement: Placement) -> None:
    """train.device against the GPUs a run will have (placement.gpus, or those visible here)."""
    gpus = placement.visible_gpus()
    where = "this machine has none visible (torch.cuda.is_available() is False)" if placement.gpus is None \
        else f"each run is given none ({placement.gpus_flag} 0)"
    if device == "cuda" and gpus == 0:
        raise ConfigError("train.device", device, f"cpu or auto: {where}")
    if device == "cpu" and placement.gpus:
        raise ConfigError("train.device", device, f"auto or cuda: each run is given {placement.gpus} GPU(s) "
                          f"({placement.gpus_flag} {placement.gpus}) that it would not use")
    if device != "cpu" and placement.gpus and placement.ranks > placement.gpus:
        raise ConfigError("--tasks-per-run", placement.ranks, f"at most one rank per GPU ({placement.gpus} "
                          f"GPU(s) per run, {placement.gpus_flag}): nccl cannot put two ranks on one GPU")


def _key(args: tuple) -> str:
    """A cache key for a check's arguments: frozen configs hold dicts (params), so not hash() but
    their repr, which names every field and value (asdict + JSON cost 0.5 ms per run on 10,000 runs).
    Equal configs whose params dicts were written in another order get two keys: a cache miss, no error."""
    return repr(args)
