"""`python -m runner.submit SPEC`: the grid's pending runs as a submitit job array (SLURM or local).

On SLURM every run is one array task of `--tasks-per-run` tasks (one DDP rank each,
= --gpus-per-run when on GPUs), at most --max-parallel at once; timeouts and
preemptions requeue and resume (runner.launch.submitit_jobs). --executor local runs
the same runs as processes here (--max-parallel lanes, each running its runs in order).
"""

from __future__ import annotations

import argparse
from collections import Counter
import sys
import time
from pathlib import Path
from typing import Optional

from runner.cli import add_set_option, command
from runner.config import from_dict, run_id
from runner.launch import slurm_jobs
from runner.launch.many import pending
from runner.launch.arrays import runs_per_task_in_room, submission_groups, submitit_limits
from runner.launch.revision import submission_provenance
from runner.launch.submitit_jobs import make_executor, run_groups, submit_runs, tasks_per_run
from runner.launch.validate import Placement, expand_checked
from runner.spec import load_spec
from runner.store import submissions


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runner.submit", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="jobs/*.yaml")
    add_set_option(p, help="override for every run")
    p.add_argument("--out", default="results", help="results directory, on a file system the nodes share")
    p.add_argument("--executor", choices=("auto", "slurm", "local", "debug"), default="auto",
                   help="auto: SLURM when sbatch is found, else local; debug runs inline")
    p.add_argument("--partition"), p.add_argument("--account"), p.add_argument("--qos")
    p.add_argument("--gpus-per-run", type=int, default=0, help="GPUs per run (one task = one rank per GPU)")
    p.add_argument("--tasks-per-run", type=int, default=0, help="DDP ranks per run (default: GPUs per run, or 1)")
    p.add_argument("--nodes-per-run", type=int, default=1,
                   help="nodes per run; the run's tasks (and GPUs) are split evenly over them")
    p.add_argument("--cpus-per-task", type=int, default=2)
    p.add_argument("--mem-gb", type=int, default=0, help="memory per node (0: the partition's default)")
    p.add_argument("--timeout-min", type=int, default=240, help="time limit of each array task")
    p.add_argument("--max-parallel", type=int, default=16, help="array throttle (local: parallel lanes)")
    p.add_argument("--max-requeue", type=int, default=3, help="requeues after timeouts (preemptions: unlimited)")
    p.add_argument("--signal-delay-s", type=int, default=90, help="USR2 this long before the time limit")
    p.add_argument("--setup", action="append", default=[], help="shell line run before each task (module load ...)")
    p.add_argument("--name", default="dml-grid")
    p.add_argument("--runs-per-task", type=int, default=0,
                   help="runs one array task trains (default 1, or --runs-per-gpu)")
    p.add_argument("--runs-per-gpu", type=int, default=1,
                   help="runs an array task trains at once, in as many processes sharing its GPU and CPUs")
    p.add_argument("--max-submit-jobs", type=int, default=0,
                   help="jobs (array tasks) you may have queued at once (0: MaxSubmitJobs of sacctmgr, MaxJobCount); "
                        "runs per task rise until the tasks fit")
    p.add_argument("--max-array-size", type=int, default=0,
                   help="tasks per array (0: MaxArraySize of scontrol show config)")
    p.add_argument("--time-factor", type=float, default=2.0, help="--timeout-min x this for runs that timed out")
    p.add_argument("--mem-factor", type=float, default=2.0, help="memory x this for runs out of memory")
    p.add_argument("--max-attempts", type=int, default=5, help="submissions of one run at most (0: no limit)")
    p.add_argument("--retry-failed", action="store_true", help="also rerun runs recorded as failed")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print each run's status")
    args = p.parse_args(argv)
    tasks = tasks_per_run(args)
    if args.runs_per_gpu < 1 or (args.runs_per_gpu > 1 and tasks > 1):
        p.error(f"--runs-per-gpu: got {args.runs_per_gpu}, expected a positive integer (1 with {tasks} tasks per run)")
    args.runs_per_task = args.runs_per_task or args.runs_per_gpu
    if args.max_submit_jobs < 0:
        p.error(f"--max-submit-jobs: got {args.max_submit_jobs}, expected a positive integer, or 0 for the site's limit")
    if args.nodes_per_run < 1 or tasks % args.nodes_per_run or (args.gpus_per_run % args.nodes_per_run):
        p.error(f"--nodes-per-run: got {args.nodes_per_run}, expected a positive divisor of the run's "
                f"{tasks} task(s) and {args.gpus_per_run} GPU(s)")
    return args


@command
def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    # every run checked before anything is queued, against the ranks and GPUs each will get
    gpus = args.gpus_per_run if args.executor != "debug" else None  # debug trains here, on what is here
    placement = Placement(ranks=tasks_per_run(args), gpus=gpus)
    runs = expand_checked(load_spec(args.spec, args.set), placement)
    todo = pending(runs, args.out, args.retry_failed)
    if not todo:
        print(f"nothing to do: all {len(runs)} runs of {args.spec} are done in {args.out}")
        return 0
    executor = make_executor(args)
    t0 = time.perf_counter()
    jobs, groups = submit_classes(args, executor, runs, todo)
    if not jobs:
        print(f"nothing to submit: the {len(todo)} pending runs are queued already or out of attempts")
        return 0
    record(args, jobs, groups, executor.cluster)
    print(f"submitted {sum(map(len, groups))} of {len(runs)} runs as {len(jobs)} {executor.cluster} job(s): "
          f"{jobs[0].job_id.split('_')[0]}  (logs: {Path(args.out).resolve() / 'submitit'})", flush=True)
    if not args.wait:
        return 0
    statuses = []
    for job in jobs:
        try:
            statuses += [r["status"] for r in job.results()[0]]  # rank 0's result (DDP: one per task)
        except Exception as exc:  # the job itself failed (killed, out of requeues): see its log
            print(f"job {job.job_id}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            statuses.append("error")
    print(f"{statuses.count('completed')} completed, {len(statuses) - statuses.count('completed')} other "
          f"({', '.join(sorted(set(statuses)))}) in {time.perf_counter() - t0:.0f} s")
    return 0 if all(s in ("completed", "locked") for s in statuses) else 1


def submit_classes(args: argparse.Namespace, executor, runs: list, todo: list[int]) -> tuple[list, list[list[dict]]]:
    """Submit the pending runs; on SLURM runs whose last job timed out (ran out of memory) get
    --timeout-min (memory) x the factor in arrays of their own, and queued runs are left alone."""
    jobs, groups = [], []
    slurm = executor.cluster == "slurm"
    max_size = args.max_array_size or (slurm_jobs.max_array_size() if slurm else 0) or 0
    classes = submission_groups(runs, args.out, todo, time_factor=args.time_factor, mem_factor=args.mem_factor,
                                max_attempts=args.max_attempts, partition=args.partition) if slurm else [(todo, [], "")]
    runs_per_task = max(1, args.runs_per_task)
    if slurm:  # every array task is one job for the site's MaxSubmitJobs
        runs_per_task = runs_per_task_in_room([len(c[0]) for c in classes], runs_per_task, args.max_submit_jobs)
    for indices, sbatch, why in classes:
        base = {"timeout_min": args.timeout_min, **({"mem_gb": args.mem_gb} if args.mem_gb else {})}
        executor.update_parameters(**{**base, **submitit_limits(sbatch)})
        if why:
            print(f"{len(indices)} run(s) {why}")
        group = run_groups([runs[i].to_dict() for i in indices], executor.cluster, args.max_parallel, runs_per_task)
        jobs += submit_runs(executor, group, args.out, args.retry_failed, max_size, args.runs_per_gpu)
        groups += group
    return jobs, groups


def record(args: argparse.Namespace, jobs: list, groups: list[list[dict]], cluster: str) -> None:
    """One line in OUT/submissions.jsonl: the jobs and which runs each trains (runner.status reads it)."""
    out = Path(args.out).resolve()
    runs = [[run_id(from_dict(c)), job.job_id] for job, group in zip(jobs, groups) for c in group]
    arrays = Counter(job.job_id.split("_")[0] for job in jobs)  # job id -> its tasks, in submission order
    submissions.append_submission(out, {
        "kind": "runner.submit", "cluster": cluster, "command": " ".join(sys.argv), "out": str(out),
        "jobs": [{"job_id": a, "tasks": n} for a, n in arrays.items()],
        "array_ranges": [f"0-{n - 1}%{args.max_parallel}" for n in arrays.values()],
        "limits": {"timeout_min": args.timeout_min, "mem_gb": args.mem_gb},
        "output": str(out / "submitit" / "%j" / "%j_0_log.out"), **submission_provenance(out), "runs": runs})


if __name__ == "__main__":
    sys.exit(main())
