"""The one place that reads the process environment: ranks, devices, process groups.

Order of precedence: torchrun (RANK/LOCAL_RANK/WORLD_SIZE), then an srun step
(SLURM_PROCID/SLURM_LOCALID/SLURM_STEP_NUM_TASKS; submitit on SLURM starts its tasks
with srun, so this covers it too), then submitit's local executor (SUBMITIT_LOCAL_*),
then a single process.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as tdist

from runner.config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"
    """Who started the processes: single, torchrun, slurm."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return "127.0.0.1"
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_port(job_id: str, step_id: str) -> int:
    """A port derived from (job, step): packed srun steps in one allocation do not collide."""
    return 20000 + zlib.crc32(f"{job_id}.{step_id}".encode()) % 30000


def from_environ(environ: Optional[dict] = None) -> DistEnv:
    """Read rank and world from torchrun or an srun step; a single process otherwise."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    # SLURM_NTASKS also describes the batch script itself; only an srun step sets STEP_NUM_TASKS
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if tasks > 1 and "SLURM_PROCID" in env:
        addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "")))
        port = int(env.get("MASTER_PORT") or slurm_port(env.get("SLURM_JOB_ID", "0"), env.get("SLURM_STEP_ID", "0")))
        return DistEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), tasks, addr, port, "slurm")
    local_tasks = int(env.get("SUBMITIT_LOCAL_NTASKS", "1"))
    if local_tasks > 1 and "SUBMITIT_LOCAL_GLOBALID" in env:
        port = int(env.get("MASTER_PORT") or slurm_port(env.get("SUBMITIT_LOCAL_JOB_ID", "0"), "local"))
        return DistEnv(int(env["SUBMITIT_LOCAL_GLOBALID"]), int(env.get("SUBMITIT_LOCAL_LOCALID", 0)), local_tasks,
                       "127.0.0.1", port, "submitit-local")
    return DistEnv()


def slurm_job() -> dict:
    """The SLURM job this process runs in (empty outside SLURM): ids, node list and restart count, for logs
    and a run's provenance."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT",
            "SLURM_JOB_NODELIST", "SLURM_JOB_PARTITION")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}


def pick_device(requested: str, env: DistEnv) -> torch.device:
    """auto: the local rank's GPU when CUDA is available, else CPU; ConfigError for cuda without one."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device", requested, f"cpu or auto: no CUDA device is visible on {hostname()}")
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device, timeout_s: int = 600) -> bool:
    """nccl on GPU, gloo on CPU; True when this call made the group (a no-op for one process,
    or when one exists already, e.g. Ray Train's)."""
    if not env.distributed or tdist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                             init_method=f"tcp://{env.master_addr}:{env.master_port}",
                             rank=env.rank, world_size=env.world_size,
                             timeout=datetime.timedelta(seconds=timeout_s))
    return True


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank (pickled; small objects only); `obj` itself for one process."""
    if not env.distributed or not tdist.is_initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather_hosts(env: DistEnv) -> list:
    """Host name of every rank, in rank order (one all-gather; just this host for one process)."""
    if not env.distributed or not tdist.is_initialized():
        return [hostname()]
    hosts = [None] * env.world_size
    tdist.all_gather_object(hosts, hostname())
    return hosts


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def is_tty() -> bool:
    """Progress bars only for a person watching a terminal (not SLURM logs, not CI)."""
    return sys.stderr.isatty() and os.environ.get("CI", "") == ""


def hostname() -> str:
    return socket.gethostname()
