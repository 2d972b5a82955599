"""The one loop that runs several runs in a process, and the status of a grid's runs.

runner.grid (--run, --run-index, array tasks and srun steps), runner.submit (one
submitit task) and runner.tune (one trial) all go through `run_each`, so a run that
another process holds (store.RunLocked) is handled the same way everywhere.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

from runner import dist, store
from runner.config import ConfigError, RunConfig, flatten, run_id
from runner.launch.run import run_one
from runner.launch.summary import report_result
from runner.store import catalog

LOCKED = "locked"
"""Summary status of a run skipped because another process trains it."""


def run_each(runs: Iterable[RunConfig], out: str | Path, env: Optional[dist.DistEnv] = None, *,
             wait_if_locked_s: float = 0.0, **run_kwargs) -> Iterator[dict]:
    """run_one for each config in order, yielding its summary; a failed run never stops the others.

    A run another process holds is skipped (status `locked`), or, with wait_if_locked_s > 0,
    waited for: polled every that many seconds until its holder is done, then taken
    (run_one skips it when it completed). A ConfigError that run_one raises (an unwritable
    --out; a run's own config or data errors are its failed run.h5) becomes a `failed` summary.
    """
    env = env or dist.from_environ()
    for cfg in runs:
        while True:
            try:
                yield run_one(cfg, out, env, **run_kwargs)
            except store.RunLocked as exc:
                if wait_if_locked_s > 0:
                    time.sleep(wait_if_locked_s)
                    continue
                yield _summary(cfg, out, LOCKED, str(exc))
            except ConfigError as exc:
                yield _summary(cfg, out, "failed", f"ConfigError: {exc}")
            break


def _summary(cfg: RunConfig, out: str | Path, status: str, error: str) -> dict:
    return {"run_id": run_id(cfg), "status": status, "error": error, "path": str(store.run_path(out, run_id(cfg)))}


def run_indices(runs: list[RunConfig], indices: list[int], out: str | Path, retry_failed: bool) -> int:
    """Run runs[i] for each index here and print each result; exit code 1 if any failed, 2 on a bad index."""
    env = dist.from_environ()  # an srun step with several tasks: every rank runs the same runs
    check_indices(indices, len(runs))
    failures = 0
    results = run_each((runs[i] for i in indices), out, env, retry_failed=retry_failed,
                       hparam_keys=tuple(varying_keys(runs)))
    for i, result in zip(indices, results):
        failures += report_result(i, result) if env.is_main else result["status"] == "failed"
    return 1 if failures else 0


def varying_keys(runs: list[RunConfig]) -> list[str]:
    """Config keys whose value differs between runs (what a listing or an HParams table shows first)."""
    flats = [flatten(r.to_dict()) for r in runs]
    keys = list(flats[0]) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]


def check_indices(indices: list[int], n_runs: int) -> None:
    """Every index names a run of the grid, or a ConfigError on --run-index."""
    bad = [i for i in indices if not 0 <= i < n_runs]
    if bad:
        raise ConfigError("--run-index", bad[0], f"an index in 0..{n_runs - 1}")


def run_statuses(runs: list[RunConfig], out: str | Path) -> list[Optional[str]]:
    """completed / failed / stopped / corrupt / running (locked) / None (missing) per run.

    A catalog row as fresh as its run.h5 (catalog.fresh_row) answers for the file: relaunching a
    finished 10,000-run grid reads one SQLite file, not 10,000 HDF5 files.
    """
    rows = catalog.read_catalog(out) or {}
    statuses = []
    for cfg in runs:
        rid = run_id(cfg)
        rdir = store.run_dir(out, rid)
        path = rdir / "run.h5"
        row = rows.get(rid)
        status = row["status"] if catalog.fresh_row(row, store.file_stamp(path)) else store.run_status(path)
        statuses.append("running" if status != "completed" and store.is_locked(rdir) else status)
    return statuses


def pending(runs: list[RunConfig], out: str | Path, retry_failed: bool = False) -> list[int]:
    """Indices of runs still to do: missing (or corrupt), and failed ones only when retrying.

    Runs another process is training right now (locked) are not pending: a second
    launcher would only skip them.
    """
    todo = {None, "corrupt", "stopped"} | ({"failed"} if retry_failed else set())
    return [i for i, s in enumerate(run_statuses(runs, out)) if s in todo]


def array_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts)
