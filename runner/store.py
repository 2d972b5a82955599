"""The results directory: one folder per run, its lock, and its run.h5 (docs/hdf5.md).

OUT/runs/<run_id>/ holds run.h5 (the contract between training and analysis), the
`.lock` a training process holds, checkpoint.pt and model.pt. Every file is written
through `atomic_path`: a temporary name, fsync, rename, so a file is either absent or
complete. `read_run` verifies what it opens. The names of the metrics and of the
per-step columns a run.h5 holds are defined here, once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import h5py
import numpy as np

from runner.config import ID_SCHEME, ConfigError

FORMAT_VERSION = 1
REQUIRED = ("final/train/embeddings", "final/train/labels", "final/test/embeddings", "final/test/labels")
METRIC_NAMES = ("knn1", "knn5", "ncm", "p_at_1", "r_precision", "map_at_r")
"""Test metrics of every evaluated epoch (history/epochs) and of the run (attrs `metrics`)."""
STEP_KEYS = ("loss", "active_fraction", "pos_distance", "neg_distance", "embedding_norm", "lr")
"""Per-step columns of history/steps, besides `epoch` and `step`."""
EPOCH_TIMING_KEYS = ("epoch", "train_loss", "train_s", "eval_s")
"""Columns of history/epochs that are not metrics."""


class CorruptRun(RuntimeError):
    """A run.h5 that cannot be trusted (truncated, garbage or missing parts)."""


def run_dir(out: str | Path, run_id: str) -> Path:
    return Path(out) / "runs" / run_id


def run_path(out: str | Path, run_id: str) -> Path:
    return run_dir(out, run_id) / "run.h5"


def epoch_group(epoch: int, split: str) -> str:
    """The HDF5 group of one stored epoch's embeddings of one split."""
    return f"epochs/{epoch:03d}/{split}"


# ---------------------------------------------------------------- the run lock

class RunLocked(RuntimeError):
    """Another process is running the same run_id in the same results directory."""


@contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on runs/<run_id>/.lock: two launches never train the same run at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        for _ in range(20):  # a status probe (is_locked) holds it for microseconds
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            raise RunLocked(f"run {directory.name} is being trained by another process")
        yield


def is_locked(directory: Path) -> bool:
    """True while a process holds runs/<run_id>/.lock (run_lock): the run is training."""
    try:
        with open(directory / ".lock", "r") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def remove_stale_temporaries(directory: Path) -> None:
    """Delete .*.tmp files a killed writer left; call under the run lock (nobody else writes then)."""
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- atomic files

@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """A temporary path next to `final` to write; on success it is fsynced and renamed over final.

    On an exception the temporary file is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fsync_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes to `path` atomically (atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def fsync_replace(tmp: Path, final: Path) -> None:
    """Flush `tmp` to disk and rename it over `final` (atomic on POSIX file systems)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    try:  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


MIN_FREE_BYTES = 64 * 2**20
"""Free space a results directory needs before a run starts (a tiny run.h5 + checkpoint is ~1 MB)."""


def check_writable(out: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Create `out` and probe it: unwritable or nearly full is a one-line ConfigError on --out."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{os.getpid()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
        free = shutil.disk_usage(out).free
    except OSError as exc:
        raise ConfigError("--out", str(out), f"a writable directory ({type(exc).__name__}: {exc.strerror or exc})") from None
    if free < min_free_bytes:
        raise ConfigError("--out", str(out), f"a directory with at least {min_free_bytes >> 20} MiB free "
                                             f"(has {free >> 20} MiB)")


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


def read_attrs(path: str | Path) -> dict:
    """Root attributes with JSON values decoded; raises CorruptRun on unreadable files."""
    try:
        with h5py.File(path, "r") as f:
            return _decode_attrs(f)
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptRun(f"{path}: {exc}") from exc


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
    """completed / failed / stopped, 'corrupt' for an unreadable file, None when absent."""
    if not Path(path).exists():
        return None
    try:
        attrs = read_attrs(path)
        if attrs.get("status") == "completed":
            with h5py.File(path, "r") as f:
                if any(k not in f for k in REQUIRED):
                    return "corrupt"
        return attrs.get("status", "corrupt")
    except CorruptRun:
        return "corrupt"


def read_run(path: str | Path, epochs: bool = False) -> dict:
    """Everything in run.h5 as numpy arrays and dicts; verifies required parts for completed runs."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            out = {"attrs": _decode_attrs(f), "final": {}, "epochs": {}, "history": {}}
            out["config"] = out["attrs"]["config"]
            if out["attrs"].get("status") == "completed":
                missing = [k for k in REQUIRED if k not in f]
                if missing:
                    raise CorruptRun(f"{path}: missing {', '.join(missing)}")
            for split in f.get("final", {}):
                out["final"][split] = {k: f[f"final/{split}/{k}"][()] for k in f[f"final/{split}"]}
            for name in ("steps", "epochs"):
                g = f.get(f"history/{name}", {})
                out["history"][name] = {k: g[k][()] for k in g}
            if epochs:
                for e in f.get("epochs", {}):
                    out["epochs"][int(e)] = {s: f[epoch_group(int(e), s)]["embeddings"][()] for s in f[f"epochs/{e}"]}
            g = f.get("data")
            out["data"] = {} if g is None else {**{k: g[k].asstr()[()].tolist() for k in g},
                                                 **{k: v for k, v in g.attrs.items()}}
            return out
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptRun(f"{path}: {exc}") from exc
