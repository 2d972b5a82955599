"""Read a jobs/*.yaml experiment spec and `--set key=value` overrides.

A spec is a partial RunConfig (data, model, embedding, loss, miner, train, seed)
plus optional experiment sections: `grid`, `include`, `seeds` (runner.grid) and
`search` (runner.tune). Only yaml.safe_load is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from runner.config import ConfigError, RunConfig
from runner.spec.resolve import resolve


EXPERIMENT_KEYS = ("name", "description", "variants", "grid", "include", "seeds", "search", "tune")


def load_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping; a missing file or bad YAML is a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("spec", str(path), "an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError("spec", str(path), f"valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("spec", str(path), "a YAML mapping of config sections")
    return data


def parse_set(items: list[str]) -> dict:
    """['loss.margin=0.5', 'miner.name=null'] -> {'loss': {'margin': 0.5}, 'miner': {'name': None}}."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "key=value, e.g. loss.margin=0.5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", item, f"no other value for {part}")
        node[parts[-1]] = value
    return out


def split_spec(data: dict) -> tuple[dict, dict]:
    """(config part, experiment part) of a spec mapping."""
    base = {k: v for k, v in data.items() if k not in EXPERIMENT_KEYS}
    extra = {k: v for k, v in data.items() if k in EXPERIMENT_KEYS}
    return base, extra


def load_config(spec: Optional[str | Path], sets: list[str] = ()) -> RunConfig:
    """One resolved RunConfig from a spec's base settings plus --set overrides."""
    data = load_yaml(spec) if spec else {}
    base, _ = split_spec(data)
    return resolve(base, parse_set(list(sets)))
