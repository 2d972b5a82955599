"""RESULTS/submissions.jsonl: one JSON line per submission to a scheduler, the record status reads.

A line says when, by which command, at which git revision (and uncommitted diff, stored
once under RESULTS/provenance/<sha256>.diff and referenced by hash), which jobs and
array ranges, and which run each array task trains (`runs`: [run_id, job_task] pairs,
job_task as `squeue -r` and `sacct` print it: 123_4, or 123 for a job without array).
Concurrent submissions never interleave: each line is one write(2) to an O_APPEND file
under an exclusive flock (the lock also covers file systems whose O_APPEND is not atomic).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from runner.store.files import atomic_write

SUBMISSIONS = "submissions.jsonl"
DIFF_DIR = "provenance"


def submissions_path(out: str | Path) -> Path:
    return Path(out) / SUBMISSIONS


def store_diff(out: str | Path, diff: str) -> Optional[str]:
    """Write an uncommitted diff once under OUT/provenance/<sha256>.diff; its hash (None for no diff)."""
    if not diff:
        return None
    sha = hashlib.sha256(diff.encode()).hexdigest()
    path = Path(out) / DIFF_DIR / f"{sha}.diff"
    if not path.exists():
        atomic_write(path, diff)
    return sha


def append_submission(out: str | Path, record: dict) -> dict:
    """Append one record (a `time` added when absent) as a single line; returns the record written."""
    record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **record}
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    path = submissions_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(line)
        while view:  # one write(2) in practice; a short write (signal, full disk) is finished under the lock
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the flock
    return record


def read_submissions(out: str | Path) -> list[dict]:
    """Every record in submission order; a torn last line (a crash mid-write) is ignored."""
    path = submissions_path(out)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run_jobs(records: list[dict]) -> dict[str, list[str]]:
    """run_id -> the job_task of every submission that included it, oldest first."""
    jobs: dict[str, list[str]] = {}
    for rec in records:
        for rid, job_task in rec.get("runs", []):
            jobs.setdefault(rid, []).append(job_task)
    return jobs
