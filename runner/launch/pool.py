"""Several runs at once on this machine: `runner.grid --run --jobs N`.

N worker processes (spawned, so each starts clean of this process's threads) take runs
from a queue in order; each sets its own torch thread budget, and each run is still
locked, resumable and written atomically by run_one. A worker keeps its imports and the
data sets it loaded (launch.run.prepare_data caches per process), so only the first run
in a worker pays for them. Ctrl-C reaches every worker (one process group): each run
stops where it is, keeping its last epoch checkpoint, and the next launch resumes it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from runner.config import RunConfig
from runner.launch.many import run_each, varying_keys
from runner.launch.summary import report_result


def available_cpus() -> int:
    """The CPUs this process may use (a SLURM allocation or a taskset), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan_jobs(jobs: str, runs: list[RunConfig], threads_per_run: Optional[int]) -> tuple[int, int]:
    """(workers, threads per run) for `--jobs N|auto`: auto = CPUs ÷ threads per run.

    Threads per run: --threads-per-run, else the runs' train.num_threads when they all set
    one, else CPUs ÷ workers (at least 1).
    """
    cpus = available_cpus()
    set_threads = {r.train.num_threads for r in runs}
    threads = threads_per_run or (set_threads.pop() if len(set_threads) == 1 and 0 not in set_threads else None)
    if jobs == "auto":
        workers = max(1, cpus // (threads or 1))
    else:
        workers = int(jobs)
    workers = max(1, min(workers, len(runs)))
    return workers, threads or max(1, cpus // workers)


def _worker(tasks, results, stop, out: str, retry_failed: bool, threads: int, hparam_keys: tuple = (),
            interruptible: bool = True) -> None:
    """Take (index, config) from `tasks` until the None sentinel or `stop`; put (index, summary) on `results`.

    Started with SIGINT ignored (a Ctrl-C while the interpreter boots would print a traceback
    from multiprocessing); Ctrl-C is restored here, once there is a run to stop cleanly, unless
    the launching process ignored it too (a background job of a script): then it stays ignored.
    """
    if interruptible:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(threads)
    try:
        for i, cfg in iter(tasks.get, None):
            if stop.is_set():
                break
            results.put((i, next(run_each([cfg], out, progress=False, retry_failed=retry_failed,
                                                    hparam_keys=hparam_keys))))
    except KeyboardInterrupt:  # Ctrl-C: run_one has stopped the run (its last checkpoint stays)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second one (forwarded by the parent) must not cut the exit


def run_parallel(runs: list[RunConfig], indices: list[int], out: str | Path, retry_failed: bool,
                 workers: int, threads: int) -> int:
    """Run runs[i] for i in indices on `workers` processes of `threads` threads each; exit code as run_indices."""
    # train.num_threads is execution-only (not part of run_id): setting it keeps every run's id
    todo = [(i, dataclasses.replace(runs[i], train=dataclasses.replace(runs[i].train, num_threads=threads)))
            for i in indices]
    print(f"{len(todo)} runs on {workers} worker(s) x {threads} thread(s)", flush=True)
    ctx = multiprocessing.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for item in todo:
        tasks.put(item)
    for _ in range(workers):
        tasks.put(None)
    stop = ctx.Event()
    interruptible = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    procs = [ctx.Process(target=_worker, args=(tasks, results, stop, str(out), retry_failed, threads,
                                               tuple(varying_keys(runs)), interruptible), daemon=True)
             for _ in range(workers)]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited through exec by the spawned workers
    try:
        for proc in procs:
            proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    failures, done = 0, 0
    try:
        while done < len(todo):
            try:
                i, result = results.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    print(f"error: every worker exited with {len(todo) - done} run(s) left", file=sys.stderr)
                    return 1
                continue
            done += 1
            failures += report_result(i, result)
    except KeyboardInterrupt:
        stop.set()  # no worker takes another run
        deadline = time.monotonic() + 5
        for proc in procs:  # a terminal's Ctrl-C reached them too; give them a moment to stop
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:  # a `kill -INT` of this process alone did not: pass it on
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGINT)
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():  # still booting when the signal came: nothing of a run to keep yet
                proc.terminate()
        print("interrupted: runs keep their last checkpoint; run the same command again to resume", file=sys.stderr)
        return 130
    for proc in procs:
        proc.join()
    return 1 if failures else 0
