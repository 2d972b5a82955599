"""Grid runs as submitit jobs: the Checkpointable task, the executor, and the submission.

On SLURM every run is one array task of `tasks_per_run` tasks (one DDP rank each). The
submitted callable is a submitit Checkpointable: on timeout or preemption submitit
requeues it and the run resumes from the checkpoint of its last completed epoch.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from pathlib import Path

import submitit
import torch

from runner import dist
from runner.config import from_dict
from runner.launch.many import run_each
from runner.launch.pool import available_cpus
from runner.launch.summary import format_result


class GridTask(submitit.helpers.Checkpointable):
    """Train runs one after another (each: skip if completed, resume if checkpointed), or
    runs_per_gpu of them at once in as many processes that share the task's GPU and CPUs."""

    def __call__(self, configs: list[dict], out: str, retry_failed: bool, runs_per_gpu: int = 1) -> list[dict]:
        env = dist.from_environ()
        if runs_per_gpu > 1 and not env.distributed:
            results = run_shared(configs, out, retry_failed, runs_per_gpu)
            for result in results:
                print(format_result(result), dist.slurm_job(), flush=True)
            return results
        results = []
        for result in run_each((from_dict(c) for c in configs), out, env, progress=False, retry_failed=retry_failed):
            if env.is_main:
                print(format_result(result), dist.slurm_job(), flush=True)
            results.append(result)
        return results

    def checkpoint(self, configs: list[dict], out: str, retry_failed: bool,
                   runs_per_gpu: int = 1) -> submitit.helpers.DelayedSubmission:
        # called by submitit's signal handler on rank 0: no collectives, no I/O here. run_one has
        # written checkpoint.pt after every epoch; the requeued job loads it and skips finished runs.
        return submitit.helpers.DelayedSubmission(GridTask(), configs, out, retry_failed, runs_per_gpu)


def run_shared(configs: list[dict], out: str, retry_failed: bool, workers: int) -> list[dict]:
    """configs on `workers` spawned processes at once (one GPU, the CPUs split between them)."""
    threads = max(1, available_cpus() // workers)
    with multiprocessing.get_context("spawn").Pool(min(workers, len(configs))) as pool:
        return pool.starmap(_run_config, [(c, out, retry_failed, threads) for c in configs], chunksize=1)


def _run_config(config: dict, out: str, retry_failed: bool, threads: int) -> dict:
    torch.set_num_threads(threads)
    result = next(run_each([from_dict(config)], out, progress=False, retry_failed=retry_failed))
    return {**result, "worker_pid": os.getpid()}


def tasks_per_run(args: argparse.Namespace) -> int:
    """DDP ranks of one run: --tasks-per-run, else one per GPU, else 1."""
    return args.tasks_per_run or max(1, args.gpus_per_run)


def make_executor(args: argparse.Namespace) -> submitit.Executor:
    """A submitit executor for --executor with the SLURM/local options applied."""
    cluster = {"auto": None, "slurm": "slurm", "local": "local", "debug": "debug"}[args.executor]
    folder = Path(args.out).resolve() / "submitit" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=args.max_requeue)
    tasks = tasks_per_run(args)
    params = dict(name=args.name, timeout_min=args.timeout_min, nodes=args.nodes_per_run,
                  tasks_per_node=tasks // args.nodes_per_run,
                  cpus_per_task=args.cpus_per_task, slurm_array_parallelism=args.max_parallel,
                  slurm_signal_delay_s=args.signal_delay_s)
    if args.gpus_per_run:
        params["gpus_per_node"] = args.gpus_per_run // args.nodes_per_run
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    for key in ("partition", "account", "qos"):
        if getattr(args, key):
            params[f"slurm_{key}"] = getattr(args, key)
    if args.setup:
        params["slurm_setup"] = args.setup
    executor.update_parameters(**params)
    return executor


def run_groups(configs: list[dict], cluster: str, lanes: int, runs_per_task: int = 1) -> list[list[dict]]:
    """The runs of each job: runs_per_task per array task on SLURM; `lanes` jobs on the local executor."""
    if cluster == "slurm":
        return [configs[k:k + runs_per_task] for k in range(0, len(configs), runs_per_task)]
    # the local executor starts every job at once: bound it by running lanes in sequence
    return [configs[i::lanes] for i in range(min(lanes, len(configs)))]


def submit_runs(executor: submitit.Executor, groups: list[list[dict]], out: str, retry_failed: bool,
                max_array_size: int = 0, runs_per_gpu: int = 1) -> list:
    """One job per group; on SLURM arrays of at most max_array_size tasks (0: one array);
    each task trains runs_per_gpu of its runs at once."""
    out = str(Path(out).resolve())
    size = max_array_size or len(groups)
    jobs = []
    with submitit.helpers.clean_env():  # from inside a SLURM job, don't leak its SLURM_* variables
        for start in range(0, len(groups), size):
            chunk = groups[start:start + size]
            jobs += executor.map_array(GridTask(), chunk, [out] * len(chunk), [retry_failed] * len(chunk),
                                       [runs_per_gpu] * len(chunk))
    return jobs
