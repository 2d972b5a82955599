"""run.h5 files -> one DataFrame, one row per run_id (config columns + metrics + status).

Only HDF5 is read here, through runner.store's readers (docs/hdf5.md); nothing is
trained or re-run. Unreadable,
truncated and failed files are skipped with one warning that lists them. Metrics are
recomputed from the stored final embeddings by the run's recorded protocol (attrs
eval_protocol, eval_query, eval_gallery; analysis.metrics) and checked against the
`metrics` attribute the run stored. With a cache_dir, each run's row (its scalars and the
recomputed metrics) is kept in cache_dir/rows.json under the run.h5's size and mtime: a
second load opens no HDF5 file it has read before, and a run rewritten (rerun) or added is
read again.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from analysis.cache import StampedCache
from analysis.metrics import protocol_of, run_metrics
from runner import store
from runner.config import DataConfig, flatten
from runner.data import ImageSet, load_dataset
from runner.store import METRIC_NAMES

METRIC_LABELS = {"knn1": "kNN-1", "knn5": "kNN-5", "ncm": "NCM", "p_at_1": "P@1",
                 "r_precision": "R-prec", "map_at_r": "MAP@R", "recall_at_1": "R@1", "recall_at_2": "R@2",
                 "recall_at_4": "R@4", "recall_at_8": "R@8", "nmi": "NMI", "ami": "AMI"}
RUN_SPECIFIC = ("seed", "train.device", "train.num_threads", "train.deterministic")
"""Config columns that do not define a configuration: runs differing only here are repeats."""
INFO_COLUMNS = ("run_id", "path", "status", "config_id", "config_label", "mining", "loss_family",
                "metrics_diff", "n_steps", "epochs_run", "train_time_s", "family", "n_classes",
                "eval_protocol", "eval_query", "eval_gallery")


@dataclass
class Runs:
    table: pd.DataFrame
    """One row per usable run: config columns (dotted), metrics, INFO_COLUMNS."""
    skipped: list = field(default_factory=list)
    """(path, reason) of files that were not loaded."""
    config_columns: list = field(default_factory=list)
    """Flattened config keys present in the table (seed included)."""

    @property
    def varying(self) -> list[str]:
        """Config columns (seed and run-specific ones excluded) that take more than one value."""
        return varying_columns(self.table, self.config_columns)


def config_row(cfg: dict) -> dict:
    """Dotted config columns (runner.config.flatten); a mapping or list is one JSON cell (sorted keys)."""
    return {key: json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            for key, value in flatten(cfg).items()}


def find_run_files(root: str | Path) -> list[Path]:
    """Every run.h5 under root (results/, results/runs/ or one run directory)."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("run.h5") if p.is_file())


def _read_row(path: Path) -> dict:
    """Attributes and config of one file (one open); raises CorruptRun or returns a row with status."""
    view = store.read_overview(path)
    status, attrs, data = view["status"], view["attrs"], view["data"]
    if status == "corrupt":
        raise store.CorruptRun(f"{path}: unreadable or truncated")
    cfg = attrs.get("config")
    if not isinstance(cfg, dict):
        raise store.CorruptRun(f"{path}: no config")
    row = config_row(cfg)
    row["_config_keys"] = list(row)
    row["config_json"] = json.dumps(cfg, sort_keys=True)
    row["family"] = str(data.get("family", cfg.get("data", {}).get("name", "")))
    row["n_classes"] = len(data["class_names"]) if "class_names" in data else np.nan
    protocol = protocol_of(attrs)
    row.update(eval_protocol=protocol["name"], eval_query=protocol["query"], eval_gallery=protocol["gallery"],
               _attrs=attrs)
    stored = attrs.get("metrics") if isinstance(attrs.get("metrics"), dict) else {}
    row.update({f"stored_{k}": float(stored[k]) for k in METRIC_NAMES if k in stored})
    row.update(run_id=attrs.get("run_id", path.parent.name), path=str(path), status=status,
               has_final=view["has_final"], n_steps=view["n_steps"],
               epochs_run=attrs.get("epochs_run", np.nan),
               train_time_s=attrs.get("train_time_s", np.nan), error=attrs.get("error", ""))
    return row


def load_runs(root: str | Path, recompute: bool = True, include_failed: bool = False,
              cache_dir: Optional[str | Path] = None, run_ids: Optional[set] = None,
              recompute_max: Optional[int] = None) -> Runs:
    """Read every run.h5 under root into one table; skip (and list) corrupt and failed files.

    Args:
        recompute: recompute metrics from the stored embeddings (the table's values) and
            record the largest difference to the stored attrs["metrics"] in `metrics_diff`.
        include_failed: keep failed runs (for loss curves up to the failure); off for tables.
        cache_dir: keep each run's row in cache_dir/rows.json, keyed by the file's stamp
            (size, mtime): unchanged runs are not opened again.
        run_ids: read only runs/<run_id>/run.h5 of these (the trials of a search).
        recompute_max: recompute at most this many runs, spread evenly over the sorted files
            (a check of the stored values); the others keep the metrics they stored (runs
            that stored none are recomputed). None: every run.
    """
    paths = [p for p in find_run_files(root) if run_ids is None or p.parent.name in run_ids]
    checked = set(_spread(paths, recompute_max)) if recompute else set()
    cache = row_cache(cache_dir, recompute, recompute_max)
    rows, skipped = [], []
    with threadpool_limits(1):  # hundreds of small kNN problems: BLAS threads would only spin
        for path in paths:
            row = cache.get(path)
            if row is None:
                try:
                    row = cache.put(path, _with_metrics(_read_row(path), path in checked))
                except (store.CorruptRun, OSError, KeyError, ValueError) as exc:
                    row = cache.put(path, {"corrupt": str(exc)})  # atomic writes: it stays so until rewritten
            if "corrupt" in row:
                skipped.append((str(path), f"corrupt: {row['corrupt']}"))
                continue
            if row["status"] == "failed" and not include_failed:
                skipped.append((str(path), f"failed: {row.get('error') or 'no error recorded'}"))
                continue
            rows.append(row)
    cache.save()
    if skipped:
        listing = "\n  ".join(f"{p} ({why})" for p, why in skipped)
        warnings.warn(f"skipped {len(skipped)} run file(s):\n  {listing}", stacklevel=2)
    if not rows:
        return Runs(pd.DataFrame(columns=["run_id", "path", "status", *METRIC_NAMES]), skipped, [])
    config_columns = list(dict.fromkeys(k for r in rows for k in r["_config_keys"]))
    table = pd.DataFrame(rows).drop(columns="_config_keys")
    _warn_metric_differences(table)
    table = _add_derived(table, config_columns)
    return Runs(table.reset_index(drop=True), skipped, config_columns)


def _spread(paths: list, n: Optional[int]) -> list:
    """n of the paths, evenly spaced (all of them for n None or n >= len)."""
    if n is None or n >= len(paths):
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)] if n > 0 else []


ROWS_VERSION = 2
"""Part of the row cache's key: bump it when _read_row or _with_metrics change what they return."""


def row_cache(cache_dir: Optional[str | Path], recompute: bool, recompute_max: Optional[int]) -> StampedCache:
    """cache_dir/rows-<kind>.json: one file per way of computing the metric columns."""
    kind = "stored" if not recompute else "recomputed" if recompute_max is None else f"checked{recompute_max}"
    return StampedCache(Path(cache_dir) / f"rows-{kind}.json" if cache_dir else None, ROWS_VERSION)


def _with_metrics(row: dict, recompute: bool) -> dict:
    """The row's metric columns (recomputed by its protocol, or as stored) and metrics_diff."""
    attrs = row.pop("_attrs")
    stored = {k: row[f"stored_{k}"] for k in METRIC_NAMES if f"stored_{k}" in row}
    m, diff = stored, np.nan
    if (recompute or not all(k in stored for k in ("knn1", "map_at_r"))) and row["has_final"]:
        m = run_metrics(store.read_final(row["path"]), attrs)  # by the run's recorded protocol
        d = [abs(m[k] - v) for k, v in stored.items() if np.isfinite(v)]
        diff = max(d) if d else np.nan
    row.update({k: float(m.get(k, np.nan)) for k in METRIC_NAMES}, metrics_diff=diff, metrics_recomputed=m is not stored)
    return row


def _warn_metric_differences(table: pd.DataFrame) -> None:
    bad = table[table["metrics_diff"] > 1e-4]
    if len(bad):
        warnings.warn(f"{len(bad)} run(s) store metrics that differ from the exact recomputation "
                      f"(max {bad['metrics_diff'].max():.3g}; the tables use the recomputed values): "
                      f"{', '.join(bad['run_id'])}", stacklevel=3)


def _add_derived(table: pd.DataFrame, config_columns: list[str]) -> pd.DataFrame:
    """config_id/label (all config columns but seed), mining (none/mined), loss_family."""
    keys = [c for c in config_columns if c not in RUN_SPECIFIC]
    canon = table[keys].map(str).agg("|".join, axis=1)
    table["config_id"] = pd.factorize(canon, sort=True)[0]
    miner = table.get("miner.name", pd.Series([None] * len(table)))
    table["mining"] = np.where(miner.isna() | miner.astype(str).isin(["None", "none", ""]), "none", "mined")
    name = table.get("loss.name", pd.Series([""] * len(table))).astype(str).str.lower()
    table["loss_family"] = np.select([name.str.contains("contrastive"), name.str.contains("triplet")],
                                     ["contrastive", "triplet"], default=name)
    varying = varying_columns(table, config_columns)
    table["config_label"] = [config_label(r, varying) for _, r in table.iterrows()]
    return table


def varying_columns(table: pd.DataFrame, config_columns: list[str]) -> list[str]:
    return [c for c in config_columns if c not in RUN_SPECIFIC and c in table
            and table[c].map(str).nunique() > 1]


SHORT = {"loss.name": "", "miner.name": "", "loss.margin": "m=", "embedding.dim": "d=",
         "miner.params": "", "data.name": "", "miner.margin": "mm="}
LABEL_ORDER = ("data.name", "loss.name", "miner.name", "loss.margin", "embedding.dim")


def short_loss_name(name: str) -> str:
    """TripletMarginLoss -> Triplet, ContrastiveLoss -> Contrastive (labels, legends, answers)."""
    return name.replace("MarginLoss", "").replace("Loss", "")


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def short_value(key: str, value) -> str:
    """A config value as labels show it: floats to 3 significant digits, short loss and miner names.

    Takes the value or its text (groupby keys are strings): 0.27384021296942856 and
    "0.27384021296942856" both read 0.274; None, NaN, "None" and "nan" read none (no miner).
    """
    if value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and value in ("None", "nan")):
        text = "none"
    elif isinstance(value, (float, np.floating)):
        text = f"{float(value):.3g}"
    elif isinstance(value, str) and any(c in value for c in ".eE") and _is_number_text(value):
        text = f"{float(value):.3g}"
    else:
        text = str(value)
    if key == "loss.name":
        text = short_loss_name(text)
    if key == "miner.name":
        text = "no miner" if text in ("none", "None") else "+" + text.replace("Miner", "")
    return text


def label_part(key: str, value) -> str:
    """'m=0.274', 'd=32', '+TripletMargin', 'lr=0.00428': one key of a configuration label."""
    return SHORT.get(key, key.split(".")[-1] + "=") + short_value(key, value)


def config_label(row, varying: list[str]) -> str:
    """Short human label of a configuration from the columns that vary in the grid."""
    parts = []
    for key in sorted(varying, key=lambda k: (LABEL_ORDER + (k,)).index(k)):
        if key == "miner.params" or (key == "miner.margin" and "loss.margin" in varying):
            continue  # follows from the miner / loss margin in the grids we run
        parts.append(label_part(key, row[key]))
    return " · ".join(parts) or "all runs"


# ---------------------------------------------------------------- per-run tables (arrays: runner.store.read_final, read_epoch)

def load_history(path: str | Path, name: str = "steps") -> pd.DataFrame:
    """/history/steps (one row per optimiser step) or /history/epochs as a DataFrame."""
    return pd.DataFrame(store.read_history(path, name))


def load_data_info(path: str | Path) -> dict:
    """class_names, parents (or None), family, image_shape, config of one run."""
    data = store.read_data_info(path)
    shape = data.get("image_shape")
    return {"class_names": data.get("class_names"), "parents": data.get("parents"),
            "family": str(data.get("family", "")), "image_shape": None if shape is None else np.asarray(shape).tolist(),
            "config": store.read_attrs(path)["config"]}


# ---------------------------------------------------------------- source images (galleries, baselines)

@lru_cache(maxsize=4)
def _load_source_cached(data_json: str) -> ImageSet:
    return load_dataset(DataConfig(**json.loads(data_json)))


def load_split_images(data_cfg: dict, index: np.ndarray) -> Optional[np.ndarray]:
    """uint8 N×C×H×W images of the source data set at `index` (cached per data config); None if unavailable."""
    try:
        ds = _load_source_cached(json.dumps(data_cfg, sort_keys=True))
    except Exception as exc:  # missing files, unknown data set: galleries/baselines say so instead
        warnings.warn(f"cannot load data set {data_cfg.get('name')!r}: {exc}", stacklevel=2)
        return None
    pos = {int(i): r for r, i in enumerate(ds.index.tolist())}
    try:
        rows = np.asarray([pos[int(i)] for i in index])
    except KeyError:
        warnings.warn(f"data set {data_cfg.get('name')!r} does not hold the stored indices", stacklevel=2)
        return None
    return ds.images[rows].numpy()
