"""Caches of the report, one JSON file each: a value per run.h5, valid while the file is unchanged.

An entry remembers the stamp of the run.h5 it was computed from (runner.store.file_stamp, the one the
catalog compares too); an entry whose stamp differs is computed again, and entries of files that are
gone are dropped at the next write. Nothing here reads HDF5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from runner.store import atomic_write, file_stamp


def _json_scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class StampedCache:
    """path -> (stamp, value) in one JSON file (None: no cache); written back once by save(), atomically."""

    def __init__(self, file: Optional[Path], version: int):
        self.file, self.version = file, version
        self.entries: dict = {}
        self.seen: dict = {}
        self.dirty = False
        if file is not None and file.exists():
            try:
                data = json.loads(file.read_text())
                self.entries = data["entries"] if data.get("version") == version else {}
            except (ValueError, KeyError, TypeError):
                self.entries = {}  # a cache that cannot be read is rebuilt

    def get(self, path: str | Path):
        """The value stored for this very file, else None."""
        entry = self.entries.get(str(path))
        try:
            if entry is None or entry["stamp"] != file_stamp(path):
                return None
        except OSError:
            return None
        self.seen[str(path)] = entry
        return dict(entry["value"]) if isinstance(entry["value"], dict) else entry["value"]

    def put(self, path: str | Path, value):
        if self.file is not None:
            try:
                self.seen[str(path)] = {"stamp": file_stamp(path), "value": value}
                self.dirty = True
            except OSError:
                pass  # gone meanwhile: not cached
        return value

    def save(self) -> None:
        if self.file is None or not (self.dirty or len(self.seen) != len(self.entries)):
            return
        atomic_write(self.file, json.dumps({"version": self.version, "entries": self.seen}, default=_json_scalar))
