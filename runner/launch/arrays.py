"""Job arrays that fit the cluster, retries that fix the cause, and the record of a submission.

A grid's pending runs become *tasks* of `runs_per_task` runs each (one Python start
trains them one after another, each with its own run.h5, lock and resume), and the
tasks become arrays of at most MaxArraySize tasks: array task ids run 0..n-1 and the
array's offset (GRID_TASK_OFFSET) names its first task, so a 5,000-run grid fits a
cluster whose task ids must stay below 1001. The tasks and arrays are frozen into the
manifest; array task t of the array at offset o runs the manifest's tasks[o + t].

Runs whose last job ended in TIMEOUT get the time limit of that job × time_factor
(capped by the partition's MaxTime), OUT_OF_MEMORY the memory × mem_factor, in arrays
of their own; runs already queued or running are not submitted again; runs submitted
max_attempts times are left out with a note.

Every array task is one job for the site's MaxSubmitJobs (per user: association or QOS)
and MaxJobCount (the controller's, all users): when the tasks would not fit beside the
jobs already queued, runs_per_task is raised until they do (a note on stderr), and a
submission that cannot fit even so is refused with a line that says what to do.
"""

from __future__ import annotations

import getpass
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from runner.config import ConfigError, RunConfig, run_id
from runner.launch import slurm_jobs, status
from runner.launch.revision import submission_provenance
from runner.store import submissions

IN_QUEUE = {"pending", "requeued", "preempted", "running"}


@dataclass
class ArrayPlan:
    """One sbatch --array of the submission: tasks[offset:offset + tasks] of the manifest."""
    offset: int
    tasks: int
    array: str
    """The --array value: 0-(tasks-1), with the %N throttle."""
    sbatch: list = field(default_factory=list)
    """Extra sbatch arguments of this array (a longer --time for runs that timed out)."""
    why: str = ""


def resource_groups(rows: dict[int, status.RunState], todo: list[int], time_factor: float, mem_factor: float,
                    max_attempts: int, max_time_s: Optional[float]) -> list[tuple[list[int], list[str], str]]:
    """(indices, sbatch args, why) per resource class of the runs to submit; queued runs left out."""
    plain, longer, bigger = [], {}, {}
    for i in todo:
        row = rows.get(i)
        if row is None:
            plain.append(i)
            continue
        if row.state in IN_QUEUE:
            continue
        if max_attempts and row.attempts >= max_attempts:
            print(f"run {row.run_id} (index {i}): {row.attempts} attempts already, the maximum (--max-attempts): "
                  f"left out", file=sys.stderr)
            continue
        if row.state == "timeout" and row.time_limit_s:
            limit = row.time_limit_s * time_factor
            limit = min(limit, max_time_s) if max_time_s else limit
            longer.setdefault(slurm_jobs.format_time(limit), []).append(i)
        elif row.state == "out_of_memory" and row.mem_mb:
            bigger.setdefault(f"{int(row.mem_mb * mem_factor)}M", []).append(i)
        else:
            plain.append(i)
    groups = [(plain, [], "")] if plain else []
    groups += [(ids, [f"--time={t}"], f"timed out: --time {t}") for t, ids in sorted(longer.items())]
    groups += [(ids, [f"--mem={m}"], f"out of memory: --mem {m}") for m, ids in sorted(bigger.items())]
    return groups


def plan_arrays(groups: list[tuple[list[int], list[str], str]], runs_per_task: int, max_array_size: int,
                max_parallel: int) -> tuple[list[list[int]], list[ArrayPlan]]:
    """(tasks: run indices per task, arrays) for the groups; an array never has more than max_array_size tasks."""
    tasks: list[list[int]] = []
    arrays = []
    for indices, sbatch, why in groups:
        group_tasks = [indices[k:k + runs_per_task] for k in range(0, len(indices), runs_per_task)]
        for start in range(0, len(group_tasks), max_array_size):
            chunk = group_tasks[start:start + max_array_size]
            throttle = f"%{max_parallel}" if max_parallel else ""
            arrays.append(ArrayPlan(len(tasks), len(chunk), f"0-{len(chunk) - 1}{throttle}", sbatch, why))
            tasks += chunk
    return tasks, arrays


def submission_groups(runs: list[RunConfig], out: str | Path, todo: list[int], *, time_factor: float = 2.0,
                      mem_factor: float = 2.0, max_attempts: int = 0,
                      partition: Optional[str] = None) -> list[tuple[list[int], list[str], str]]:
    """resource_groups of the pending runs `todo`, with their last SLURM states and the partition's MaxTime."""
    by_id = {run_id(runs[i]): i for i in todo}
    rows = {}
    if Path(out, submissions.SUBMISSIONS).exists():
        rows = {by_id[r.run_id]: r for r in status.collect(out, [(rid, {}) for rid in by_id])}
    needs_cap = any(r.state == "timeout" for r in rows.values())
    max_time_s = slurm_jobs.partition_max_time_s(partition) if needs_cap else None
    return resource_groups(rows, todo, time_factor, mem_factor, max_attempts, max_time_s)


def plan_submission(runs: list[RunConfig], out: str | Path, todo: list[int], *, runs_per_task: int = 1,
                    max_array_size: int = 0, max_parallel: int = 0, max_submit_jobs: int = 0,
                    **retry) -> tuple[list[list[int]], list[ArrayPlan]]:
    """The tasks and arrays of the pending runs `todo`, asking SLURM for limits and last states.

    max_submit_jobs: jobs this user may have queued at once (0: the site's MaxSubmitJobs / MaxJobCount).
    """
    max_array_size = max_array_size or slurm_jobs.max_array_size() or 1001
    groups = submission_groups(runs, out, todo, **retry)
    fitted = runs_per_task_in_room([len(indices) for indices, _, _ in groups], runs_per_task, max_submit_jobs)
    return plan_arrays(groups, fitted, max_array_size, max_parallel)


def runs_per_task_in_room(sizes: list[int], runs_per_task: int, max_submit_jobs: int = 0) -> int:
    """Runs per array task for resource groups of `sizes` runs: runs_per_task, raised (and said on stderr)
    until the tasks fit the jobs this user may still queue (submit_room); a ConfigError when even one
    task per group does not fit. slurm/grid.sh and runner.submit both plan with it."""
    runs_per_task = max(1, runs_per_task)
    room, limit = submit_room(max_submit_jobs)
    fitted = fit_runs_per_task(sizes, runs_per_task, room)
    if fitted is None:
        raise ConfigError("--max-submit-jobs", limit, f"room for {len([n for n in sizes if n])} or more array "
                          f"tasks beside the jobs already queued ({room} left): wait for queued jobs to end "
                          f"(squeue -u {getpass.getuser()}) or submit fewer runs")
    if fitted != runs_per_task:
        print(f"{limit}: {sum(sizes)} runs as {sum(-(-n // fitted) for n in sizes)} tasks of up to {fitted} runs "
              f"(--runs-per-task {runs_per_task} would need {sum(-(-n // runs_per_task) for n in sizes)} "
              f"jobs, {room} fit)", file=sys.stderr)
    return fitted


def submit_room(max_submit_jobs: int = 0) -> tuple[Optional[int], str]:
    """(array tasks that may still be submitted, the limit that says so), (None, "") when no limit is known.

    An override (--max-submit-jobs, GRID_MAX_SUBMIT_JOBS) is this user's limit; otherwise the smaller of
    the user's MaxSubmitJobs and the cluster's MaxJobCount, each less the jobs it already counts.
    """
    user = getpass.getuser()
    limits = []
    per_user = max_submit_jobs or slurm_jobs.max_submit_jobs(user)
    if per_user:
        name = "--max-submit-jobs" if max_submit_jobs else "MaxSubmitJobs"
        limits.append((per_user - (slurm_jobs.queued_jobs(user) or 0), f"{name} {per_user}"))
    total = None if max_submit_jobs else slurm_jobs.max_job_count()
    if total:
        limits.append((total - (slurm_jobs.queued_jobs() or 0), f"MaxJobCount {total}"))
    if not limits:
        return None, ""
    room, name = min(limits)
    return max(0, room), name


def fit_runs_per_task(sizes: list[int], runs_per_task: int, room: Optional[int]) -> Optional[int]:
    """The smallest runs per task >= runs_per_task whose tasks (ceil(size / K) per resource group) fit in `room`;
    None when even one task per group does not fit."""
    if room is None:
        return runs_per_task
    sizes = [n for n in sizes if n]
    if len(sizes) > room:
        return None
    k = runs_per_task
    while sum(-(-n // k) for n in sizes) > room:
        k += 1  # at most max(sizes) steps: one task per group always fits here
    return k


def submitit_limits(sbatch: list[str]) -> dict:
    """A group's sbatch arguments as submitit parameters: --time=... -> timeout_min, --mem=NM -> mem_gb."""
    params = {}
    for arg in sbatch:
        if arg.startswith("--time="):
            params["timeout_min"] = int(slurm_jobs.parse_time(arg.split("=", 1)[1]) // 60)
        elif arg.startswith("--mem="):
            params["mem_gb"] = max(1, -(-int(slurm_jobs.parse_mem(arg.split("=", 1)[1])) // 1024))
    return params


def plan_lines(arrays: list[ArrayPlan]) -> str:
    """What slurm/grid.sh reads: `OFFSET ARRAY [SBATCH ARGS...]` per array."""
    return "\n".join(" ".join([str(a.offset), a.array, *a.sbatch]) for a in arrays)


def manifest_plan(tasks: list[list[int]], arrays: list[ArrayPlan]) -> dict:
    return {"tasks": tasks, "arrays": [asdict(a) for a in arrays]}


def record_grid_submission(manifest: str | Path, submitted: list[str], command: str, kind: str = "grid.sh") -> dict:
    """Append the submission of a manifest's arrays to OUT's records.

    submitted: `JOB:OFFSET` per array as sbatch answered, or `JOB=I,J,...` for one job
    that trains runs I, J... itself (packed mode).
    """
    data = json.loads(Path(manifest).read_text())
    out, ids = data["out"], [r["run_id"] for r in data["runs"]]
    tasks = data.get("tasks") or [[i] for i in range(len(ids))]
    plans = {a["offset"]: a for a in data.get("arrays", [])}
    jobs, runs = [], []
    for item in submitted:
        if "=" in item:
            job, _, indices = item.partition("=")
            jobs.append({"job_id": job})
            runs += [[ids[int(i)], job] for i in indices.split(",") if i]
            continue
        job, _, offset = item.partition(":")
        plan = plans.get(int(offset), {"offset": int(offset), "tasks": 1, "array": "0", "sbatch": []})
        jobs.append({"job_id": job, **plan})
        for t in range(plan["tasks"]):
            runs += [[ids[i], f"{job}_{t}"] for i in tasks[plan["offset"] + t]]
    record = {"kind": kind, "command": command, "out": out, "manifest": str(Path(manifest).resolve()),
              "jobs": jobs, "array_ranges": [j.get("array", "") for j in jobs],
              "output": str(Path(out) / "logs" / "%A_%a.out") if kind == "grid.sh" else "",
              **submission_provenance(out), "runs": runs}
    return submissions.append_submission(out, record)
