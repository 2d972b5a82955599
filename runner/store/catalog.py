"""RESULTS/index.sqlite: one row per finished run, so a status or a table never opens 10,000 run.h5.

run.h5 stays the record; the catalog is an index of its root attributes, upserted
when a run finishes (runner.launch.run) and rebuilt from the run.h5 files when missing
(`python -m runner.status RESULTS --reindex`). A row remembers the stamp (size and mtime,
runner.store.file_stamp) of the run.h5 it was read from, so a reader can tell a stale row
(the file was rewritten) and read the file instead (`fresh_row`); `refresh` does that for a whole directory (what analysis.table reads).
WAL mode and a long busy timeout make many concurrent writers safe (each upsert is one
short transaction); sqlite3 is the standard library's.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Optional

from runner.config import flatten
from runner.store.files import file_stamp
from runner.store.run_file import CorruptRun, read_attrs, run_summary

CATALOG = "index.sqlite"
COLUMNS = ("run_id", "status", "config", "metrics", "start_time", "end_time", "train_time_s", "wall_time_s",
           "host", "git_rev", "error", "epochs_run", "h5_stamp", "protocol")
SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, status TEXT, config TEXT, metrics TEXT, start_time TEXT, end_time TEXT,
  train_time_s REAL, wall_time_s REAL, host TEXT, git_rev TEXT, error TEXT, epochs_run INTEGER, h5_stamp TEXT,
  protocol TEXT)"""
PROTOCOL_KEYS = ("eval_protocol", "eval_query", "eval_gallery")
"""The attrs of the run's evaluation protocol kept in the `protocol` column (JSON)."""
FINISHED = ("completed", "failed", "stopped")
LOGGER = logging.getLogger("dmlrunner")


def catalog_path(out: str | Path) -> Path:
    return Path(out) / CATALOG


def connect(out: str | Path) -> sqlite3.Connection:
    """The catalog of `out`, created when missing; WAL, and writers wait up to 60 s for each other.

    Turning a new file to WAL (and creating the table) is answered `database is locked` at once,
    without SQLite's busy wait, when several processes create the catalog together: retried here.
    """
    con = sqlite3.connect(catalog_path(out), timeout=60, isolation_level=None)
    deadline = time.monotonic() + 60
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last commits
            con.execute(SCHEMA)
            _add_missing_columns(con)
            return con
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                con.close()
                raise
            time.sleep(0.05)


def _add_missing_columns(con: sqlite3.Connection) -> None:
    """A catalog written before a column existed gets it, and every row is made stale (h5_stamp NULL) so
    that the next status or refresh reads each run.h5 once again to fill it."""
    have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
    if set(COLUMNS) <= have:
        return
    try:
        con.execute("BEGIN IMMEDIATE")
        for column in (c for c in COLUMNS if c not in have):
            con.execute(f"ALTER TABLE runs ADD COLUMN {column}")
        con.execute("UPDATE runs SET h5_stamp = NULL")
        con.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if con.in_transaction:
            con.execute("ROLLBACK")
        if "duplicate column" not in str(exc):  # another process added it first
            raise


def row_from_attrs(attrs: dict, h5_stamp: Optional[str]) -> tuple:
    """A catalog row of a run.h5's root attributes (config flattened, metrics and protocol as JSON)."""
    config = attrs.get("config") or {}
    protocol = {k: attrs[k] for k in PROTOCOL_KEYS if k in attrs}
    return (attrs.get("run_id"), attrs.get("status"), json.dumps(flatten(config), sort_keys=True),
            json.dumps(attrs.get("metrics") or {}, sort_keys=True), attrs.get("start_time"), attrs.get("end_time"),
            attrs.get("train_time_s"), attrs.get("wall_time_s"), attrs.get("host"), attrs.get("git_rev"),
            attrs.get("error"), attrs.get("epochs_run"), h5_stamp, json.dumps(protocol, sort_keys=True))


def fresh_row(row: Optional[dict], stamp: Optional[str]) -> bool:
    """Whether a catalog row was read from the run.h5 whose stamp (file_stamp) is `stamp`."""
    return row is not None and stamp is not None and row["h5_stamp"] == stamp


def _upsert(con: sqlite3.Connection, rows: list[tuple]) -> None:
    marks = ",".join("?" * len(COLUMNS))
    con.executemany(f"INSERT OR REPLACE INTO runs ({','.join(COLUMNS)}) VALUES ({marks})", rows)


def index_run(path: str | Path) -> None:
    """Upsert the run.h5 at `path` (OUT/runs/<run_id>/run.h5) into OUT's catalog; never raises.

    The run's result is its run.h5: a catalog that cannot be written (locked too long,
    read-only) is logged and left to `--reindex`, it does not fail the run.
    """
    path = Path(path)
    out = path.parent.parent.parent
    try:
        row = row_from_attrs(read_attrs(path), file_stamp(path))
        con = connect(out)
        try:
            con.execute("BEGIN IMMEDIATE")
            _upsert(con, [row])
            con.execute("COMMIT")
        finally:
            con.close()
    except (sqlite3.Error, OSError, CorruptRun) as exc:
        LOGGER.warning("catalog %s not updated for %s: %s (python -m runner.status %s --reindex)",
                       catalog_path(out), path.parent.name, exc, out)


def upsert_rows(out: str | Path, rows: list[tuple]) -> None:
    """Upsert rows (row_from_attrs) in one transaction; a catalog that cannot be written is left as it is."""
    if not rows:
        return
    try:
        con = connect(out)
        try:
            con.execute("BEGIN IMMEDIATE")
            _upsert(con, rows)
            con.execute("COMMIT")
        finally:
            con.close()
    except sqlite3.Error as exc:
        LOGGER.warning("catalog %s not updated: %s", catalog_path(out), exc)


def rebuild(out: str | Path) -> int:
    """Rows for every readable run.h5 under OUT/runs, replacing the catalog's content in one transaction."""
    rows = []
    for path in sorted(Path(out).glob("runs/*/run.h5")):
        try:
            rows.append(row_from_attrs(read_attrs(path), file_stamp(path)))
        except (CorruptRun, OSError):
            continue  # a corrupt file is no finished run: status reports it from the file
    con = connect(out)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("DELETE FROM runs")
        _upsert(con, rows)
        con.execute("COMMIT")
    finally:
        con.close()
    return len(rows)


def read_catalog(out: str | Path) -> Optional[dict[str, dict]]:
    """run_id -> row (config and metrics decoded); None when OUT has no catalog."""
    if not catalog_path(out).exists():
        return None
    con = connect(out)
    try:
        cur = con.execute(f"SELECT {','.join(COLUMNS)} FROM runs")
        rows = {}
        for values in cur:
            row = dict(zip(COLUMNS, values))
            row["config"], row["metrics"] = json.loads(row["config"]), json.loads(row["metrics"])
            row["protocol"] = json.loads(row["protocol"]) if row["protocol"] else {}
            rows[row["run_id"]] = row
        return rows
    finally:
        con.close()


def refresh(out: str | Path) -> dict[str, dict]:
    """run_id -> decoded row for every finished run.h5 under OUT/runs, reading only the files that the
    catalog lacks or that were rewritten since their row (those are upserted); the catalog is created
    when missing. Rows of deleted run.h5 files are left out (`--reindex` drops them from the file)."""
    rows = read_catalog(out) or {}
    found, fresh = {}, []
    for path in Path(out).glob("runs/*/run.h5"):
        stamp = file_stamp(path)
        if stamp is None:
            continue  # deleted while listing
        row = rows.get(path.parent.name)
        if fresh_row(row, stamp):
            found[row["run_id"]] = row
            continue
        status, attrs = run_summary(path)
        if status in FINISHED and attrs.get("run_id"):
            fresh.append(row_from_attrs(attrs, stamp))
    upsert_rows(out, fresh)
    for values in fresh:
        row = dict(zip(COLUMNS, values))
        row["config"], row["metrics"], row["protocol"] = (json.loads(row[k]) for k in ("config", "metrics", "protocol"))
        found[row["run_id"]] = row
    return found
