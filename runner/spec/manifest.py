"""Manifests: a grid's expansion frozen into a JSON file at submission.

Array task i then runs `--manifest FILE --run-index i`, so editing the spec after
submission cannot shift which run an index means.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from runner.config import ConfigError, RunConfig, from_dict, run_id
from runner.store import atomic_write


def write_manifest(path: str | Path, runs: list[RunConfig], out: str | Path, retry_failed: bool,
                   source: str = "", extra: Optional[dict] = None) -> Path:
    """Freeze the expanded runs (resolved configs) and the results directory into a JSON file.

    extra: more top-level keys (slurm/grid.sh's `tasks` and `arrays`: runner.launch.arrays).
    """
    data = {"source": source, "out": str(Path(out).resolve()), "retry_failed": retry_failed,
            "runs": [{"run_id": run_id(cfg), "config": cfg.to_dict()} for cfg in runs], **(extra or {})}
    return atomic_write(path, json.dumps(data, indent=1))


def read_manifest(path: str | Path) -> tuple[list[RunConfig], dict]:
    """(runs, manifest dict); every run_id is checked against its config."""
    try:
        data = json.loads(Path(path).read_text())
        runs = [from_dict(r["config"]) for r in data["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError("--manifest", str(path), f"a manifest written by --write-manifest ({exc})") from None
    for cfg, r in zip(runs, data["runs"]):
        if run_id(cfg) != r["run_id"]:
            raise ConfigError("--manifest", str(path), f"configs matching their run_ids ({r['run_id']})")
    return runs, data
