"""Lay partial settings over the defaults and resolve them into a complete RunConfig.

Resolution happens once, before hashing: aliases become PML class names and a miner
margin of null takes the loss margin, so two spellings of one run share a run_id.
"""

from __future__ import annotations

import dataclasses
import functools
import json

from runner.config import ConfigError, RunConfig, build
from runner.losses import loss_class, miner_class, resolve_miner_margin


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


@functools.lru_cache(maxsize=1)
def _defaults_json() -> str:
    """RunConfig's defaults as JSON, built once: a 10,000-run grid resolves 10,000 configs."""
    return json.dumps(RunConfig().to_dict())


def resolve(*layers: dict) -> RunConfig:
    """Build a complete RunConfig from (partial) nested dicts laid over the defaults.

    Derived values are filled in here, before hashing: a miner margin of null takes
    the loss margin when the miner has a margin parameter.
    """
    data = json.loads(_defaults_json())  # a fresh copy: the layers' values never reach the cached defaults
    for layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError("config", layer, "a mapping")
        data = merge_layer(data, layer)
    cfg = build(RunConfig, data)
    miner_margin = resolve_miner_margin(cfg.miner, cfg.loss)
    miner_cls = miner_class(cfg.miner.name)
    # aliases (triplet, contrastive, none) resolve to class names: one run, one run_id
    loss = dataclasses.replace(cfg.loss, name=loss_class(cfg.loss.name).__name__)
    miner = dataclasses.replace(cfg.miner, name=miner_cls.__name__ if miner_cls else None, margin=miner_margin)
    return dataclasses.replace(cfg, loss=loss, miner=miner)
