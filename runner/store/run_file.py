"""run.h5: the contract between training and analysis (docs/hdf5.md), written and read here only.

`write_run` writes a RunRecord through atomic_path, so a run.h5 is either absent or
complete. `read_run` and the partial readers (read_attrs, read_final, stored_epochs,
read_epoch, read_history, read_data_info, has_final, read_overview) verify what they open;
they are the only code that knows the paths inside the file. The names of the metrics and of
the per-step columns a run.h5 holds are defined here, once.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import h5py
import numpy as np

from runner.config import ID_SCHEME
from runner.store.files import atomic_path

FORMAT_VERSION = 1
REQUIRED = ("final/train/embeddings", "final/train/labels", "final/test/embeddings", "final/test/labels")
METRIC_NAMES = ("knn1", "knn5", "ncm", "p_at_1", "r_precision", "map_at_r",
                "recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "nmi", "ami")
"""Test metrics of every evaluated epoch (history/epochs) and of the run (attrs `metrics`); the
recall_at_<K> are those of the default eval.recall_at (docs/evaluation.md defines each)."""
STEP_KEYS = ("loss", "active_fraction", "pos_distance", "neg_distance", "embedding_norm", "lr")
"""Per-step columns of history/steps, besides `epoch` and `step`."""
EPOCH_TIMING_KEYS = ("epoch", "train_loss", "train_s", "eval_s")
"""Columns of history/epochs that are not metrics."""


class CorruptRun(RuntimeError):
    """A run.h5 that cannot be trusted (truncated, garbage or missing parts)."""


def epoch_group(epoch: int, split: str = "") -> str:
    """The HDF5 group of one stored epoch (/epochs/NNN), or of one split's embeddings in it."""
    return f"epochs/{epoch:03d}/{split}" if split else f"epochs/{epoch:03d}"


@dataclass
class RunRecord:
    """What a run leaves behind; `write_run` turns it into run.h5."""
    run_id: str
    config: dict
    status: str
    """completed, failed or stopped (ended early by a scheduler such as ASHA)."""
    attrs: dict = field(default_factory=dict)
    """Provenance: seed, versions, git_rev, host, start/end time, metrics, error..."""
    final: dict = field(default_factory=dict)
    """split -> {"embeddings", "labels", "index"} arrays."""
    epochs: dict = field(default_factory=dict)
    """epoch -> split -> embeddings; labels and index are those of `final`."""
    steps: dict = field(default_factory=dict)
    """column -> 1-D array of per-step records."""
    epoch_table: list = field(default_factory=list)
    """One dict per evaluated epoch."""
    data: dict = field(default_factory=dict)
    """class_names, parents, mean, std, family: facts about the data the run saw."""


def _columns(rows: list[dict]) -> dict:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: np.asarray([r.get(k, np.nan) for r in rows], dtype=np.float64) for k in keys}


def _write_arrays(group: h5py.Group, arrays: dict) -> None:
    for key, value in arrays.items():
        group.create_dataset(key, data=np.asarray(value))


def write_run(path: str | Path, rec: RunRecord) -> Path:
    """Write rec to path atomically (temp name in the same directory, fsync, rename)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format_version": FORMAT_VERSION, "id_scheme": ID_SCHEME, "run_id": rec.run_id,
                        "status": rec.status,
                        "config": json.dumps(rec.config, sort_keys=True)})
        for key, value in rec.attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float, bool, np.number)) else json.dumps(value)
        for split, arrays in rec.final.items():
            _write_arrays(f.require_group(f"final/{split}"), {k: arrays[k] for k in ("embeddings", "labels", "index")})
        for epoch, splits in sorted(rec.epochs.items()):
            for split, emb in splits.items():
                g = f.require_group(epoch_group(epoch, split))
                g.create_dataset("embeddings", data=np.asarray(emb, dtype=np.float32))
                if split in rec.final:  # the same rows as final/<split>
                    g["labels"] = h5py.SoftLink(f"/final/{split}/labels")
                    g["index"] = h5py.SoftLink(f"/final/{split}/index")
        _write_arrays(f.require_group("history/steps"), rec.steps)
        _write_arrays(f.require_group("history/epochs"), _columns(rec.epoch_table))
        data = f.require_group("data")
        for key, value in rec.data.items():
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
                data.create_dataset(key, data=np.asarray(value, dtype=h5py.string_dtype()))
            else:
                data.attrs[key] = value if isinstance(value, str) else np.asarray(value)
    return Path(path)


# ---------------------------------------------------------------- reading

@contextmanager
def _open(path: str | Path) -> Iterator[h5py.File]:
    """run.h5 opened for reading; an unreadable file or a missing part raises CorruptRun."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptRun(f"{path}: {exc}") from exc


def _missing(f: h5py.File) -> list[str]:
    return [k for k in REQUIRED if k not in f]


def _final(f: h5py.File) -> dict:
    return {split: {k: f[f"final/{split}/{k}"][()] for k in f[f"final/{split}"]} for split in f.get("final", {})}


def _history(f: h5py.File, name: str, columns: Optional[Sequence[str]] = None, max_points: Optional[int] = None) -> dict:
    g = f.get(f"history/{name}", {})
    keys = [k for k in (g if columns is None else columns) if k in g]
    rows = g[keys[0]].shape[0] if keys else 0
    every = max(1, rows // max_points) if max_points else 1
    return {k: g[k][::every] if every > 1 else g[k][()] for k in keys}


def _stored_epochs(f: h5py.File) -> list[int]:
    return sorted(int(e) for e in f.get("epochs", {}))


def _data(f: h5py.File) -> dict:
    g = f.get("data")
    return {} if g is None else {**{k: g[k].asstr()[()].tolist() for k in g}, **{k: v for k, v in g.attrs.items()}}


def read_attrs(path: str | Path) -> dict:
    """Root attributes with JSON values decoded; raises CorruptRun on unreadable files."""
    with _open(path) as f:
        return _decode_attrs(f)


def _decode_attrs(f: h5py.File) -> dict:
    out = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def run_status(path: str | Path) -> Optional[str]:
    """completed / failed / stopped, 'corrupt' for an unreadable file, None when absent (not opened)."""
    return run_summary(path)[0] if Path(path).exists() else None


def _status(f: h5py.File, attrs: dict) -> str:
    """The recorded status; 'corrupt' when it is missing, or 'completed' without the parts in REQUIRED."""
    status = attrs.get("status", "corrupt")
    return "corrupt" if status == "completed" and _missing(f) else status


def has_final(path: str | Path) -> bool:
    """True when every part in REQUIRED (final train/test embeddings and labels) is there."""
    with _open(path) as f:
        return not _missing(f)


def run_summary(path: str | Path) -> tuple[Optional[str], dict]:
    """(run_status, root attributes) from one open of the file: what a status of 10,000 runs reads."""
    try:
        with h5py.File(path, "r") as f:
            attrs = _decode_attrs(f)
            return _status(f, attrs), attrs
    except FileNotFoundError:
        return None, {}
    except (OSError, KeyError, ValueError):
        return ("corrupt" if Path(path).exists() else None), {}


def read_overview(path: str | Path) -> dict:
    """A results table's view of one run.h5, from one open: status (as run_status), attrs (as read_attrs),
    data (as read_data_info), has_final and n_steps (rows of /history/steps, none read).

    An unreadable or absent file raises CorruptRun.
    """
    with _open(path) as f:
        attrs = _decode_attrs(f)
        loss = f.get("history/steps/loss")
        return {"status": _status(f, attrs), "attrs": attrs, "data": _data(f), "has_final": not _missing(f),
                "n_steps": 0 if loss is None else loss.shape[0]}


def read_run(path: str | Path, epochs: bool = False) -> dict:
    """Everything in run.h5 as numpy arrays and dicts; verifies required parts for completed runs."""
    with _open(path) as f:
        attrs = _decode_attrs(f)
        missing = _missing(f) if attrs.get("status") == "completed" else []
        if missing:
            raise CorruptRun(f"{path}: missing {', '.join(missing)}")
        stored = _stored_epochs(f) if epochs else []
        return {"attrs": attrs, "config": attrs["config"], "final": _final(f),
                "epochs": {e: {s: f[epoch_group(e, s)]["embeddings"][()] for s in f[epoch_group(e)]} for e in stored},
                "history": {name: _history(f, name) for name in ("steps", "epochs")}, "data": _data(f)}


def read_final(path: str | Path) -> dict:
    """split -> {"embeddings", "labels", "index"} after the last epoch (/final)."""
    with _open(path) as f:
        return _final(f)


def stored_epochs(path: str | Path) -> list[int]:
    """The epochs whose embeddings are stored (/epochs/NNN), ascending."""
    with _open(path) as f:
        return _stored_epochs(f)


def read_epoch(path: str | Path, epoch: int) -> dict:
    """split -> {"embeddings", "labels", "index"} of one stored epoch; labels and index are /final's."""
    with _open(path) as f:
        g, final = f[epoch_group(epoch)], f.get("final", {})
        return {s: {k: g[f"{s}/{k}"][()] for k in ("embeddings", "labels", "index")} for s in g if s in final}


def read_history(path: str | Path, name: str = "steps", columns: Optional[Sequence[str]] = None,
                 max_points: Optional[int] = None) -> dict:
    """column -> 1-D array of /history/steps (one value per optimiser step) or /history/epochs.

    columns: only these (those the run has); max_points: every k-th row, k = rows // max_points
    (curves for a grid's logs), read as such from the file.
    """
    with _open(path) as f:
        return _history(f, name, columns, max_points)


def read_data_info(path: str | Path) -> dict:
    """/data: class_names and parents (lists of str) and its attributes (family, image_shape); {} if absent."""
    with _open(path) as f:
        return _data(f)
