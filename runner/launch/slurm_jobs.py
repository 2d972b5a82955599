"""What SLURM says about recorded jobs, and the site's limits: one sacct and one squeue call each.

Everything here reads SLURM's own commands (`sacct`, `squeue`, `scontrol`) and returns
plain dicts; without those commands on PATH every query answers "nothing known", so
status falls back to the files. Times are seconds, memory MiB.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Optional

QUEUED = {"PENDING", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
"""Waiting to (re)start: never a failure."""
ACTIVE = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
SACCT_FIELDS = ("JobID", "State", "Elapsed", "NodeList", "Timelimit", "ReqMem", "ExitCode")


def have_slurm() -> bool:
    return shutil.which("sacct") is not None or shutil.which("squeue") is not None


def _run(cmd: list[str], timeout_s: float = 60) -> str:
    """stdout of a SLURM command, '' when it is missing or fails (status then uses the files)."""
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return ""
    return p.stdout if p.returncode == 0 else ""


def job_attempts(job_ids: list[str]) -> tuple[dict[str, list[dict]], set[str]]:
    """(job_task ('123_4', or '123') -> its attempts, oldest first; the job ids SLURM knows at all).

    sacct (with -D: one line per attempt) knows ended and running jobs; squeue -r knows
    the pending array tasks that sacct still lists as one '123_[5-9]' line, and is newer.
    A pending task cancelled before it started leaves no line of its own: its job is
    known and the task has no attempt.
    """
    ids = sorted({j.split("_")[0] for j in job_ids})
    if not ids:
        return {}, set()
    attempts: dict[str, list[dict]] = {}
    grouped: dict[str, str] = {}
    text = _run(["sacct", "-n", "-P", "-D", "-X", "-j", ",".join(ids), "-o", ",".join(SACCT_FIELDS)])
    for line in text.splitlines():
        f = line.split("|")
        if len(f) < len(SACCT_FIELDS):
            continue
        if "[" in f[0]:  # tasks not started yet, one line: 123_[0,2,5-9%4]
            array, _, tasks = f[0].partition("_")
            grouped.update({f"{array}_{t}": f[1].split()[0] for t in expand_tasks(tasks)})
            continue
        attempts.setdefault(f[0], []).append({"state": f[1].split()[0] if f[1] else "", "elapsed_s": parse_time(f[2]),
                                              "node": f[3], "time_limit_s": parse_time(f[4]),
                                              "mem_mb": parse_mem(f[5]), "exit_code": f[6]})
    text = _run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T|%M|%N|%l|%r"])
    for line in text.splitlines():
        f = line.split("|")
        if len(f) < 6:
            continue
        live = {"state": f[1], "elapsed_s": parse_time(f[2]), "node": f[3], "time_limit_s": parse_time(f[4]),
                "reason": f[5]}
        seen = attempts.setdefault(f[0], [])
        if seen and (seen[-1]["state"] in QUEUED | ACTIVE or seen[-1]["state"] == live["state"]):
            seen[-1].update(live)  # the same attempt, as the controller sees it now
        else:
            seen.append(live)
    for task, state in grouped.items():
        if task not in attempts:
            attempts[task] = [{"state": state}]
    return attempts, {j.split("_")[0] for j in attempts}


def expand_tasks(text: str) -> list[int]:
    """'[0,2,5-7%4]' -> [0, 2, 5, 6, 7]."""
    out = []
    for part in text.strip("[]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out += range(int(lo), int(hi or lo) + 1)
    return out


def parse_time(text: str) -> Optional[float]:
    """SLURM durations ('1-02:03:04', '02:03:04', '03:04', '5' minutes) -> seconds; None for UNLIMITED."""
    text = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        return None
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if b is None and c is None:
        return float((days or 0) * 86400 + a * (3600 if days is not None else 60))
    h, mi, s = (a, b, c) if c is not None else ((0, a, b) if days is None else (a, b, 0))
    return float((days or 0) * 86400 + h * 3600 + mi * 60 + s)


def format_time(seconds: float) -> str:
    """Seconds -> sbatch --time (D-HH:MM:SS), rounded up to whole minutes."""
    minutes = -(-int(seconds) // 60)
    d, rest = divmod(minutes * 60, 86400)
    h, rest = divmod(rest, 3600)
    return (f"{d}-" if d else "") + f"{h:02d}:{rest // 60:02d}:00"


def parse_mem(text: str) -> Optional[float]:
    """'24105M', '4G', '8000Mn' (older: per node) -> MiB; None when empty."""
    m = re.fullmatch(r"([\d.]+)([KMGT]?)[nc]?", text.strip())
    if not m:
        return None
    return float(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2)]


def max_array_size() -> Optional[int]:
    """MaxArraySize of `scontrol show config` (array task ids must be below it); None when unknown."""
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", _run(["scontrol", "show", "config"]), re.M)
    return int(m.group(1)) if m else None


def max_submit_jobs(user: str) -> Optional[int]:
    """The fewest jobs `user` may have queued or running at once: the MaxSubmitJobs of the user's associations
    (sacctmgr MaxSubmit) and the MaxSubmitPU of their QOS; None when none is set (or sacctmgr is missing).
    Every array task counts as one job."""
    assoc = _run(["sacctmgr", "-nP", "show", "assoc", f"where user={user}", "format=MaxSubmit,QOS"])
    limits = [int(m) for m, _, _ in (line.partition("|") for line in assoc.splitlines()) if m.strip().isdigit()]
    qos_names = {q for line in assoc.splitlines() for q in line.partition("|")[2].split(",") if q}
    if qos_names:
        for line in _run(["sacctmgr", "-nP", "show", "qos", "format=Name,MaxSubmitPU"]).splitlines():
            name, _, limit = line.partition("|")
            if name in qos_names and limit.strip().isdigit():
                limits.append(int(limit))
    return min(limits) if limits else None


def max_job_count() -> Optional[int]:
    """MaxJobCount of `scontrol show config`: jobs the controller holds at once, of all users; None when unknown."""
    m = re.search(r"^MaxJobCount\s*=\s*(\d+)", _run(["scontrol", "show", "config"]), re.M)
    return int(m.group(1)) if m else None


def queued_jobs(user: Optional[str] = None) -> Optional[int]:
    """Jobs queued or running (array tasks one each: squeue -r), of `user` or of everyone; None without squeue."""
    if shutil.which("squeue") is None:
        return None
    text = _run(["squeue", "-h", "-r", "-o", "%i"] + (["-u", user] if user else []))
    return len(text.split())


def partition_max_time_s(partition: Optional[str] = None) -> Optional[float]:
    """MaxTime of the partition (the default one when None); None for UNLIMITED or unknown."""
    text = _run(["scontrol", "show", "partition"] + ([partition] if partition else []))
    for block in re.split(r"\n\s*\n", text):
        if partition or re.search(r"\bDefault=YES\b", block):
            m = re.search(r"\bMaxTime=(\S+)", block)
            return parse_time(m.group(1)) if m else None
    return None


def cancel(job_tasks: list[str]) -> str:
    """scancel these array tasks (or jobs); scancel's own error output, '' on success."""
    if not job_tasks:
        return ""
    p = subprocess.run(["scancel", *job_tasks], capture_output=True, text=True, timeout=120)
    return p.stderr.strip()
