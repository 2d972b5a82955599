"""`runner.grid SPEC --list --estimate`: the expected time of a grid's pending runs, from finished ones.

A pending run's estimate is the mean wall time of the completed runs with the same
config except the seed (same spec, another seed); without such runs, the mean over
every completed run of the results directory; without any, there is no basis.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Optional

from runner.config import RunConfig, flatten
from runner.launch.status import config_dict, file_states

IGNORED = ("seed",)
"""Keys that do not change a run's cost."""


def _key(flat: dict) -> str:
    return json.dumps({k: v for k, v in flat.items() if k not in IGNORED}, sort_keys=True, default=str)


def completed_times(out: str | Path) -> dict[str, list[float]]:
    """config-less-seed key -> wall times (s) of the completed runs in `out` (catalog first)."""
    runs_dir = Path(out) / "runs"
    ids = [e.name for e in os.scandir(runs_dir) if e.is_dir()] if runs_dir.is_dir() else []
    times: dict[str, list[float]] = {}
    for status, row in file_states(Path(out), ids).values():
        seconds = row.get("wall_time_s") or row.get("train_time_s")
        if status == "completed" and seconds:
            times.setdefault(_key(config_dict(row.get("config"))), []).append(float(seconds))
    return times


def estimate_lines(runs: list[RunConfig], todo: list[int], out: str | Path, gpus_per_run: int = 0) -> list[str]:
    """What --estimate prints: per-run time, its basis, and the pending runs' total hours."""
    times = completed_times(out)
    everything = [t for ts in times.values() for t in ts]
    if not everything:
        return [f"estimate: no basis (no completed run in {out} yet); run a few first, e.g. --run-index 0"]
    total_s, same = 0.0, 0
    per_run: list[float] = []
    for i in todo:
        flat = flatten(runs[i].to_dict())
        match: Optional[list[float]] = times.get(_key(flat))
        same += match is not None
        seconds = statistics.mean(match) if match else statistics.mean(everything)
        per_run.append(seconds)
        total_s += seconds
    cpus = [max(1, runs[i].train.num_threads or 1) for i in todo]
    cpu_h = sum(s * c for s, c in zip(per_run, cpus)) / 3600
    lines = [f"estimate: {len(todo)} runs to do, ~{statistics.mean(per_run) / 60:.1f} min each "
             f"({same} from completed runs of the same config with another seed, {len(todo) - same} from the mean "
             f"of {len(everything)} completed runs in {out})" if todo else "estimate: nothing to do",
             f"estimate: {total_s / 3600:.2f} run-hours, {cpu_h:.2f} CPU-hours (train.num_threads per run)"
             + (f", {total_s / 3600 * gpus_per_run:.2f} GPU-hours ({gpus_per_run} per run)" if gpus_per_run else "")]
    return lines
