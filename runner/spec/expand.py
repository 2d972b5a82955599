"""Expand an experiment spec into runs: variants × grid, plus includes, × seeds.

A spec's experiment sections (see jobs/exercise.yaml):
  variants: [partial config, ...]     non-cartesian alternatives (e.g. loss + miner pairs)
  grid: {dotted.key: [values, ...]}   cartesian product, crossed with the variants
  include: [partial config, ...]      extra single runs, added after the product
  seeds: [0, 1, 2]                    every run above once per seed
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from runner.config import ConfigError, ConfigErrors, RunConfig, run_id
from runner.spec.load import load_yaml, parse_set, split_spec
from runner.spec.resolve import merge_layer, resolve


@dataclass
class ExperimentSpec:
    name: str
    base: dict
    variants: list = field(default_factory=lambda: [{}])
    grid: dict = field(default_factory=dict)
    include: list = field(default_factory=list)
    seeds: Optional[list] = None
    search: dict = field(default_factory=dict)
    tune: dict = field(default_factory=dict)


def dotted_to_nested(flat: dict) -> dict:
    """{'loss.margin': 0.5} -> {'loss': {'margin': 0.5}}; nested values pass through."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _list_of_mappings(value, key: str) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ConfigError(key, value, "a non-empty list of partial configs (mappings)")
    return value


def load_spec(path: str | Path, sets: list[str] = ()) -> ExperimentSpec:
    """Read SPEC; --set overrides apply to the base of every run."""
    data = load_yaml(path)
    base, extra = split_spec(data)
    variants = _list_of_mappings(extra["variants"], "variants") if "variants" in extra else [{}]
    grid = extra.get("grid", {})
    if not isinstance(grid, dict) or ("grid" in extra and not grid):
        raise ConfigError("grid", grid, "a non-empty mapping of dotted.key: [values]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}", values, "a non-empty list of values")
    seeds = extra.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError("seeds", seeds, "a non-empty list of integers")
    include = _list_of_mappings(extra["include"], "include") if "include" in extra else []
    for key in ("search", "tune"):
        if key in extra and not isinstance(extra[key], dict):
            raise ConfigError(key, extra[key], "a mapping")
    if sets:
        base = merge_layer(base, parse_set(list(sets)))
    return ExperimentSpec(str(extra.get("name") or Path(path).stem), base, variants, grid, include, seeds,
                          extra.get("search") or {}, extra.get("tune") or {})


def expand_grid(spec: ExperimentSpec) -> list[RunConfig]:
    """All runs of the spec, resolved and de-duplicated by run_id (order kept).

    A layer that does not resolve is a ConfigError naming the variant or include it came
    from; every distinct one is reported (ConfigErrors), not just the first. The checks that
    need the data or a model are runner.launch.validate's, on the runs returned here.
    """
    keys = list(spec.grid)
    layers = []
    for v_i, variant in enumerate(spec.variants):
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            layers.append((f"variants[{v_i}]", variant, dotted_to_nested(dict(zip(keys, combo)))))
    layers += [(f"include[{i}]", {}, dotted_to_nested(inc)) for i, inc in enumerate(spec.include)]
    seeds = spec.seeds if spec.seeds is not None else [None]
    runs, seen, errors = [], set(), {}
    for where, variant, layer in layers:
        for seed in seeds:
            seed_layer = {} if seed is None else {"seed": seed}
            try:
                cfg = resolve(spec.base, dotted_to_nested(variant), layer, seed_layer)
            except ConfigError as exc:
                # one line per distinct problem (key and expectation; a misspelt key in every grid
                # point is one problem): the first layer that shows it is named
                errors.setdefault((exc.key, exc.expected), ConfigError(
                    exc.key, exc.value, f"{exc.expected} [in {where}: {_short(layer or variant)}]"))
                continue
            rid = run_id(cfg)
            if rid not in seen:
                seen.add(rid)
                runs.append(cfg)
    if errors:
        raise ConfigErrors.of(list(errors.values()))
    return runs


def _short(layer: dict) -> str:
    return json.dumps(layer, separators=(",", ":"))[:120]
