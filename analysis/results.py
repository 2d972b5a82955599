"""`load_results(RESULTS)`: one DataFrame row per finished run, read from the catalog (RESULTS/index.sqlite).

The catalog (runner.store.catalog) holds each run.h5's root attributes; `refresh_catalog`
creates it when missing and re-reads only the run.h5 files it lacks or that were rewritten
since their row, so a table of 10,000 runs opens no HDF5 file once the catalog is up to date.
Embeddings and curves are not in the catalog: analysis.load reads those from run.h5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from runner.store import refresh_catalog

INFO_COLUMNS = ("run_id", "status", "start_time", "end_time", "train_time_s", "wall_time_s", "epochs_run", "host",
                "git_rev", "error", "eval_protocol", "eval_query", "eval_gallery")
"""The columns of every load_results frame besides the config keys and the metrics."""


def cell(value):
    """A config value as one DataFrame cell: a mapping or list is its JSON text (sorted keys), None is NaN."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return np.nan if value is None else value


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """One row per finished run (completed, failed or stopped) under RESULTS/runs, sorted by run_id.

    Columns: INFO_COLUMNS, then the flattened config keys (`loss.name`, `embedding.dim`, `seed`...,
    a `params` mapping as JSON text), then one column per metric the runs stored (`map_at_r`, ...;
    NaN where a run has none, as failed runs). `attrs["config_columns"]` and `attrs["metric_columns"]`
    name the two groups.
    """
    rows = refresh_catalog(results_dir)
    records, config_keys, metric_keys = [], {}, {}
    for rid in sorted(rows):
        row = rows[rid]
        record = {k: row["protocol"].get(k) if k.startswith("eval_") else row.get(k) for k in INFO_COLUMNS}
        config = {k: cell(v) for k, v in row["config"].items()}
        metrics = {k: float(v) for k, v in row["metrics"].items() if isinstance(v, (int, float))}
        config_keys.update(dict.fromkeys(config))
        metric_keys.update(dict.fromkeys(metrics))
        records.append({**record, **config, **metrics})
    clash = set(config_keys) & (set(INFO_COLUMNS) | set(metric_keys))
    if clash:  # a config key named like a column would be silently overwritten
        raise ValueError(f"config keys {sorted(clash)} collide with result columns")
    columns = [*INFO_COLUMNS, *config_keys, *metric_keys]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame.attrs.update(config_columns=list(config_keys), metric_columns=list(metric_keys))
    return frame
