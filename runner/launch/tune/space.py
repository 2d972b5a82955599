"""A spec's `search:` and `tune:` sections: settings, distributions, and each trial's config.

Everything here is checked before Ray starts; ray is imported only to build the
param space (param_space).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from runner.config import ConfigError, RunConfig
from runner.launch.validate import Placement, check_runs
from runner.spec import dotted_to_nested, load_spec, merge_layer, resolve


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")


@dataclass(frozen=True)
class TuneSettings:
    metric: str = "val_map_at_r"
    """Validation metric ASHA compares: val_map_at_r or val_knn1 (never a test metric)."""
    mode: str = "max"
    """max or min."""
    max_epochs: Optional[int] = None
    """Epochs of a trial that runs to the end; None takes train.epochs of the spec."""
    grace_period: int = 2
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: int = 3
    """ASHA keeps the top 1/reduction_factor at each rung."""
    cpus_per_trial: float = 1
    """Logical CPUs per trial (per worker with workers_per_trial > 1)."""
    gpus_per_trial: float = 0
    """GPUs per trial; > 1 runs the trial as DDP over that many Ray Train workers."""
    workers_per_trial: int = 1
    """DDP workers per trial (gloo on CPU); defaults to gpus_per_trial when that is > 1."""
    val_fraction: float = 0.15
    """data.val_fraction used when the spec has none: the validation split comes from train."""
    seed: int = 0
    """Seed of the search algorithm (the sampled configs)."""


def parse_settings(raw: dict) -> TuneSettings:
    names = TuneSettings.__dataclass_fields__
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"tune.{key}", value, f"one of {', '.join(names)}")
    s = TuneSettings(**raw)
    if not s.metric.startswith("val_"):
        raise ConfigError("tune.metric", s.metric, "a validation metric such as val_map_at_r or val_knn1")
    if s.mode not in ("max", "min"):
        raise ConfigError("tune.mode", s.mode, "max or min")
    for key in ("grace_period", "reduction_factor", "workers_per_trial"):
        if not isinstance(getattr(s, key), int) or getattr(s, key) < 1:
            raise ConfigError(f"tune.{key}", getattr(s, key), "an integer >= 1")
    if not 0 < s.val_fraction < 1:
        raise ConfigError("tune.val_fraction", s.val_fraction, "a number in (0, 1)")
    return s


def parse_search(search: dict) -> dict:
    """{dotted.key: (distribution, args)} after checking each entry's shape; one-line ConfigError."""
    if not search:
        raise ConfigError("search", search, "a non-empty mapping of dotted.key: {choice|uniform|loguniform|int: ...}")
    out = {}
    for key, spec in search.items():
        where = f"search.{key}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(where, spec, "one of {choice: [v, ...]}, {uniform: [lo, hi]}, "
                                           "{loguniform: [lo, hi]}, {int: [lo, hi]}")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ConfigError(where, args, "a non-empty list of choices")
        else:
            num = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) \
                if isinstance(args, list) else False
            if not num or len(args) != 2 or not args[0] < args[1]:
                raise ConfigError(where, args, f"[low, high] numbers with low < high for {kind}")
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(where, args, "loguniform bounds > 0")
            if kind == "int" and not all(isinstance(a, int) for a in args):
                raise ConfigError(where, args, "integer bounds [low, high] (both included)")
        out[str(key)] = (kind, args)
    return out


def trial_base(base: dict, settings: TuneSettings, num_threads: int = 1) -> dict:
    """The spec's base plus what every trial needs: a validation split, a torch thread per CPU."""
    layer: dict = {"train": {"num_threads": num_threads}}
    if not base.get("data", {}).get("val_fraction"):
        layer["data"] = {"val_fraction": settings.val_fraction}
    if settings.max_epochs:
        layer["train"]["epochs"] = settings.max_epochs
    return merge_layer(base, layer)


def trial_config(base: dict, sample: dict) -> RunConfig:
    return resolve(base, dotted_to_nested(sample))


def validate_search(base: dict, space: dict, s: TuneSettings) -> None:
    """Resolve the base with each bound/choice of every key, then check all of them as a grid's runs.

    Unknown keys and bad values fail while resolving; data, model, weights, device and
    sampler problems fail in check_runs, one line each naming the base or the search values.
    """
    try:
        configs, names = [resolve(base)], ["the spec's base"]
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.value, f"{exc.expected} [in the spec's base]") from None
    for key, (kind, args) in space.items():
        for value in args:  # every choice, or both bounds: every sample lies between them
            try:
                configs.append(trial_config(base, {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"search.{key}", value, f"{exc.expected} [{exc.key}]") from None
            names.append(f"search.{key}={value}")
    workers = s.workers_per_trial if s.workers_per_trial > 1 else max(1, int(s.gpus_per_trial))
    # as trainables.build_trainable asks Ray: a GPU per DDP worker, or the trial's (fractional) share
    gpus = (workers if s.gpus_per_trial > 0 else 0) if workers > 1 else math.ceil(s.gpus_per_trial)
    check_runs(configs, Placement(ranks=workers, gpus=gpus, gpus_flag="tune.gpus_per_trial"), names)


def param_space(space: dict) -> dict:
    from ray import tune  # optional dependency: imported once the spec is known to be valid
    make = {"choice": lambda a: tune.choice(a), "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a), "int": lambda a: tune.randint(a[0], a[1] + 1)}
    return {"search": {key: make[kind](args) for key, (kind, args) in space.items()}}


def prepare(spec_path: str, sets: list[str]) -> tuple[str, dict, dict, TuneSettings]:
    """Load and validate everything before Ray starts: (name, trial base, search space, settings)."""
    spec = load_spec(spec_path, sets)
    settings = parse_settings(spec.tune)
    space = parse_search(spec.search)
    base = trial_base(spec.base, settings, num_threads=max(1, int(settings.cpus_per_trial)))
    validate_search(base, space, settings)
    return spec.name, base, space, settings
