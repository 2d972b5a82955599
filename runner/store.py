"""One HDF5 file per run: the contract between training and analysis (docs/hdf5.md).

Files are written under a temporary name, fsynced and renamed, so a `run.h5` is
either absent or complete. `read_run` verifies what it opens.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

FORMAT_VERSION = 1
REQUIRED = ("final/train/embeddings", "final/train/labels", "final/test/embeddings", "final/test/labels")


class CorruptRun(RuntimeError):
    """A run.h5 that cannot be trusted (truncated, garbage or missing parts)."""


def run_dir(out: str | Path, run_id: str) -> Path:
    return Path(out) / "runs" / run_id


def run_path(out: str | Path, run_id: str) -> Path:
    return run_dir(out, run_id) / "run.h5"


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
    from runner.config import ConfigError
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format_version": FORMAT_VERSION, "run_id": rec.run_id, "status": rec.status,
                            "config": json.dumps(rec.config, sort_keys=True)})
            for key, value in rec.attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float, bool, np.number)) else json.dumps(value)
            for split, arrays in rec.final.items():
                _write_arrays(f.require_group(f"final/{split}"), {k: arrays[k] for k in ("embeddings", "labels", "index")})
            for epoch, splits in sorted(rec.epochs.items()):
                for split, emb in splits.items():
                    g = f.require_group(f"epochs/{epoch:03d}/{split}")
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
        fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
                    out["epochs"][int(e)] = {s: f[f"epochs/{e}/{s}/embeddings"][()] for s in f[f"epochs/{e}"]}
            g = f.get("data")
            out["data"] = {} if g is None else {**{k: g[k].asstr()[()].tolist() for k in g},
                                                 **{k: v for k, v in g.attrs.items()}}
            return out
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptRun(f"{path}: {exc}") from exc
