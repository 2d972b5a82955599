"""The state of every run of a results directory, reconciled with SLURM for the recorded jobs.

    files        run.h5 (or its catalog row), the run lock, train.log's last epoch
    records      RESULTS/submissions.jsonl: which job (array task) each run was given to
    SLURM        one sacct and one squeue call for all those jobs (runner.launch.slurm_jobs)

A run.h5 that says completed wins; otherwise the newest job's live state says whether
the run waits (pending, requeued, preempted: never failed) or runs, and an ended job
without a result says why (timeout, out_of_memory, node_fail, cancelled, failed).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from runner import store
from runner.config import flatten
from runner.launch import slurm_jobs
from runner.store import catalog, submissions

STATES = ("completed", "failed", "running", "pending", "requeued", "preempted", "timeout", "out_of_memory",
          "node_fail", "cancelled", "stopped", "missing")
FAILED_STATES = ("failed", "timeout", "out_of_memory", "node_fail", "cancelled")
ENDED = {"TIMEOUT": "timeout", "OUT_OF_MEMORY": "out_of_memory", "NODE_FAIL": "node_fail", "CANCELLED": "cancelled",
         "FAILED": "failed", "BOOT_FAIL": "failed", "DEADLINE": "timeout"}
EPOCH_LINE = re.compile(rb"epoch (\d+)/\d+")


@dataclass
class RunState:
    """One row of `runner.status`."""
    run_id: str
    state: str
    index: Optional[int] = None
    """The run's index in the spec (when status was given one)."""
    job: str = ""
    """The newest SLURM job (array task: 123_4) the run was submitted in."""
    slurm_state: str = ""
    attempts: int = 0
    """Submissions that included the run, plus requeues of each."""
    elapsed_s: Optional[float] = None
    time_limit_s: Optional[float] = None
    mem_mb: Optional[float] = None
    node: str = ""
    output: str = ""
    """The job's SLURM output file."""
    last_epoch: Optional[int] = None
    """Last epoch logged (and checkpointed) by a run that has not finished."""
    reason: str = ""
    config: dict = field(default_factory=dict)
    """Flattened config (for --where)."""


def file_states(out: Path, run_ids: list[str]) -> dict[str, tuple[Optional[str], dict]]:
    """run_id -> (run.h5 status, catalog row) for runs with a run.h5.

    A fresh catalog row (catalog.fresh_row: same stamp as the file) spares opening the file; the files read
    instead (no catalog yet, or rewritten since) are upserted into it, so the next status
    of 10,000 runs reads one SQLite file rather than 10,000 HDF5 files.
    """
    rows = catalog.read_catalog(out) or {}
    found, fresh = {}, []
    for rid in run_ids:
        path = store.run_path(out, rid)
        stamp = store.file_stamp(path)
        if stamp is None:
            continue
        row = rows.get(rid)
        if catalog.fresh_row(row, stamp):
            found[rid] = (row["status"], row)
            continue
        status, attrs = store.run_summary(path)
        if status is None:
            continue
        values = catalog.row_from_attrs(attrs, stamp) if attrs else None
        found[rid] = (status, dict(zip(catalog.COLUMNS, values)) if values else {})
        if values and status in ("completed", "failed", "stopped"):
            fresh.append(values)
    catalog.upsert_rows(out, fresh)
    return found


def last_logged_epoch(run_dir: Path) -> Optional[int]:
    """The epoch of train.log's last line (each logged epoch is checkpointed right after)."""
    try:
        with open(run_dir / "train.log", "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            found = EPOCH_LINE.findall(fh.read())
    except FileNotFoundError:
        return None
    return int(found[-1]) if found else None


def reconcile(file_status: Optional[str], locked: bool, attempts: list[dict], error: str) -> tuple[str, str]:
    """(state, reason) of a run from its run.h5 status, its lock and its newest job's attempts."""
    if file_status == "completed":
        return "completed", ""
    live = attempts[-1]["state"] if attempts else ""
    earlier = {a["state"] for a in attempts[:-1]}
    if live in slurm_jobs.QUEUED:
        if "PREEMPTED" in earlier:
            return "preempted", "preempted, waiting to restart"
        return ("requeued", "requeued, waiting to restart") if earlier else ("pending", attempts[-1].get("reason", ""))
    if live in ("REQUEUED", "PREEMPTED"):
        return live.lower(), ""
    if locked or live in slurm_jobs.ACTIVE:
        return "running", ""
    if file_status == "failed":
        return "failed", error or "failed (no reason recorded)"
    if file_status == "stopped":
        return "stopped", "stopped early by a scheduler"
    if live in ENDED:
        state = ENDED[live]
        return state, f"SLURM {live}" + (f", exit code {attempts[-1].get('exit_code')}" if state == "failed" else "")
    if file_status == "corrupt":
        return "missing", "run.h5 unreadable (corrupt): it is run again"
    return "missing", "job ended without a result" if live == "COMPLETED" else ""


def collect(out: str | Path, runs: Optional[list[tuple[str, dict]]] = None, use_slurm: bool = True) -> list[RunState]:
    """One RunState per run: `runs` ((run_id, flat config) of a spec, in order), else every run OUT knows.

    OUT knows the runs with a directory under runs/ and the runs of its submission records.
    """
    out = Path(out)
    records = submissions.read_submissions(out)
    jobs = submissions.run_jobs(records)
    outputs = {rid: rec.get("output", "") for rec in records for rid, _ in rec.get("runs", [])}
    if runs is None:
        on_disk = [e.name for e in os.scandir(out / "runs") if e.is_dir()] if (out / "runs").is_dir() else []
        ids = list(dict.fromkeys(sorted(on_disk) + list(jobs)))
        runs = [(rid, {}) for rid in ids]
        configs = manifest_configs(records)
    else:
        configs = {}
    files = file_states(out, [rid for rid, _ in runs])
    local = {j["job_id"] for rec in records if rec.get("cluster", "slurm") != "slurm" for j in rec.get("jobs", [])}
    asked = [j for job in jobs.values() for j in job if j.split("_")[0] not in local]  # local pids are no SLURM jobs
    attempts, known = slurm_jobs.job_attempts(asked) if use_slurm and asked else ({}, set())
    rows = []
    for i, (rid, flat) in enumerate(runs):
        file_status, info = files.get(rid, (None, {}))
        run_jobs = jobs.get(rid, [])
        job = run_jobs[-1] if run_jobs else ""
        tries = attempts.get(job, [])
        if not tries and job.split("_")[0] in known:  # SLURM knows the array, not this task: cancelled unstarted
            tries = [{"state": "CANCELLED"}]
        locked = file_status != "completed" and store.is_locked(store.run_dir(out, rid))
        state, reason = reconcile(file_status, locked, tries, info.get("error") or "")
        last = tries[-1] if tries else {}
        config = flat or config_dict(info.get("config")) or configs.get(rid, {})
        row = RunState(rid, state, index=i if flat else None, job=job, slurm_state=last.get("state", ""),
                       attempts=sum(max(1, len(attempts.get(j, []))) for j in run_jobs[:-1]) + max(1, len(tries))
                       if run_jobs else 0,
                       elapsed_s=last.get("elapsed_s"), time_limit_s=last.get("time_limit_s"),
                       mem_mb=last.get("mem_mb"), node=last.get("node", ""),
                       output=output_file(outputs.get(rid, ""), job), reason=reason, config=config)
        if state not in ("completed", "missing") or (state == "missing" and job):
            row.last_epoch = last_logged_epoch(store.run_dir(out, rid))
        rows.append(row)
    return rows


def config_dict(config) -> dict:
    """A catalog row's config: decoded already, or its JSON text."""
    if isinstance(config, dict):
        return config
    return json.loads(config) if config else {}


def manifest_configs(records: list[dict]) -> dict[str, dict]:
    """run_id -> flattened config from the manifests the submission records name (runs with no run.h5 yet)."""
    from_manifests: dict[str, dict] = {}
    for path in dict.fromkeys(r.get("manifest") for r in records if r.get("manifest")):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        for run in data.get("runs", []):
            from_manifests[run["run_id"]] = flatten(run["config"])
    return from_manifests


def output_file(pattern: str, job: str) -> str:
    """A recorded output pattern (%A array job, %a task, %j job_task) for one job."""
    if not pattern or not job:
        return ""
    array, _, task = job.partition("_")
    return pattern.replace("%A", array).replace("%a", task).replace("%j", job)


def matches(row: RunState, where: list[tuple[str, str]], states: set[str]) -> bool:
    """--where key=value (all of them, compared as text) and --state."""
    if states and row.state not in states:
        return False
    return all(key in row.config and _text(row.config[key]) == value for key, value in where)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def summary_line(rows: list[RunState]) -> str:
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    return f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("completed", "missing"))


def failures_by_reason(rows: list[RunState]) -> dict[str, list[str]]:
    """First line of each failure reason -> its run_ids (runs that ended without a result)."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r.state in FAILED_STATES:
            groups.setdefault(f"{r.state}: {(r.reason or '?').splitlines()[0][:200]}", []).append(r.run_id)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def as_json(rows: list[RunState]) -> str:
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    return json.dumps({"counts": counts, "runs": [asdict(r) for r in rows]}, indent=1)
