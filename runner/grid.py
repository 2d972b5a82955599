"""`python -m runner.grid SPEC`: expand an experiment spec into runs, list them, run them.

The spec's sections are described in runner.spec.expand (and jobs/exercise.yaml).
Every expanded run is resolved and validated before anything is submitted.
Launchers (slurm/grid.sh, runner.submit) freeze the expansion into a manifest
(--write-manifest FILE); slurm/grid.sh adds --plan-arrays (tasks of --runs-per-task
runs, arrays of at most MaxArraySize tasks, longer limits for runs that timed out:
runner.launch.arrays) and array task t of the array at offset o runs `--manifest FILE
--task o+t`; --record-submission appends what sbatch queued to RESULTS/submissions.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from runner.cli import add_set_option, command
from runner.config import ConfigError, RunConfig, flatten, run_id
from runner import dist
from runner.launch.arrays import manifest_plan, plan_lines, plan_submission, record_grid_submission
from runner.launch.estimate import estimate_lines
from runner.launch.many import array_ranges, check_indices, pending, run_indices, run_statuses, varying_keys
from runner.launch.pool import plan_jobs, run_parallel
from runner.launch.validate import Placement, expand_checked
from runner.spec import load_spec, read_manifest, write_manifest


@command
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.grid", description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", help="jobs/*.yaml (or --manifest FILE)")
    add_set_option(p, help="override for every run")
    p.add_argument("--out", default=None, help="results directory (default: results, or the manifest's)")
    p.add_argument("--manifest", help="read the runs from a manifest instead of a spec")
    p.add_argument("--write-manifest", metavar="FILE", help="freeze the expanded runs into FILE (JSON)")
    p.add_argument("--list", action="store_true", help="list runs with run_id and status (done/failed/missing)")
    p.add_argument("--estimate", action="store_true",
                   help="with --list: expected time per run and total hours, from completed runs in --out")
    p.add_argument("--pending", action="store_true", help="print the indices of runs still to do, comma-separated")
    p.add_argument("--array", action="store_true", help="print the sbatch --array value of the pending runs")
    p.add_argument("--max-parallel", type=int, default=0, help="with --array: the %% throttle (0: none)")
    p.add_argument("--run-index", type=int, action="append", help="run the run(s) at this index (array tasks)")
    p.add_argument("--run", action="store_true", help="run every pending run here, one after another")
    p.add_argument("--retry-failed", action="store_true", help="also rerun runs recorded as failed")
    p.add_argument("--jobs", default="1", metavar="N|auto",
                   help="with --run/--run-index: N runs at once here (auto: CPUs / threads per run)")
    p.add_argument("--threads-per-run", type=int, default=None,
                   help="with --jobs: torch threads of each run (default: train.num_threads, else CPUs / N)")
    add_array_options(p)
    p.add_argument("--tasks-per-run", type=int, default=None,
                   help="for the checks: DDP ranks each run will have (default: this process's; grid.sh passes it)")
    p.add_argument("--gpus-per-run", type=int, default=None,
                   help="GPUs each run will have, for the checks (default: those visible here; grid.sh passes it) "
                        "and for GPU-hours with --estimate")
    args = p.parse_args(argv)
    if args.record_submission:
        record_grid_submission(args.manifest, args.record_submission, args.command, args.kind)
        return 0
    if args.jobs != "auto" and not (args.jobs.isdigit() and int(args.jobs) >= 1):
        raise ConfigError("--jobs", args.jobs, "a positive integer or auto")
    runs, out, retry = load_runs(args)
    if args.plan_arrays:
        return plan(args, runs, out, retry)
    if args.write_manifest:
        write_manifest(args.write_manifest, runs, out, retry, source=args.spec or args.manifest)
    if args.task is not None:
        args.run_index = task_indices(args.manifest, args.task)
    if args.list:
        list_runs(runs, out)
        if args.estimate:
            print("\n".join(estimate_lines(runs, pending(runs, out, retry), out, args.gpus_per_run or 0)))
        return 0
    if args.pending or args.array:
        todo = pending(runs, out, retry)
        throttle = f"%{args.max_parallel}" if args.max_parallel and todo else ""
        print(array_ranges(todo) + throttle if args.array else ",".join(str(i) for i in todo))
        return 0
    indices = args.run_index if args.run_index is not None else (pending(runs, out, retry) if args.run else None)
    if indices is None:
        if not args.write_manifest:
            print(f"{len(runs)} runs; use --list, --pending, --run or --run-index", file=sys.stderr)
        return 0
    if args.run and not indices:
        print(f"nothing to do: all {len(runs)} runs are done in {out}")
        return 0
    check_indices(indices, len(runs))
    if args.jobs != "1":
        workers, threads = plan_jobs(args.jobs, [runs[i] for i in indices], args.threads_per_run)
        if workers > 1:
            return run_parallel(runs, indices, out, retry, workers, threads)
    return run_indices(runs, indices, out, retry)


def add_array_options(p: argparse.ArgumentParser) -> None:
    """The options slurm/grid.sh passes: plan the arrays, run one task of them, record the submission."""
    p.add_argument("--plan-arrays", action="store_true",
                   help="with --write-manifest: freeze tasks and arrays, print `OFFSET ARRAY [SBATCH ARGS]` per array")
    p.add_argument("--runs-per-task", type=int, default=1, help="runs one array task trains one after another")
    p.add_argument("--max-array-size", type=int, default=0, help="tasks per array (0: MaxArraySize of scontrol)")
    p.add_argument("--max-submit-jobs", type=int, default=0,
                   help="jobs (array tasks) you may have queued at once (0: MaxSubmitJobs of sacctmgr, MaxJobCount)")
    p.add_argument("--time-factor", type=float, default=2.0, help="time limit x this for runs that timed out")
    p.add_argument("--mem-factor", type=float, default=2.0, help="memory x this for runs out of memory")
    p.add_argument("--max-attempts", type=int, default=5, help="submissions of one run at most (0: no limit)")
    p.add_argument("--partition", default=None, help="whose MaxTime caps a longer time limit (default partition)")
    p.add_argument("--task", type=int, help="with --manifest: run the runs of this task of --plan-arrays")
    p.add_argument("--record-submission", nargs="+", metavar="JOB[:OFFSET]",
                   help="with --manifest: record these submitted arrays (sbatch job id : array offset)")
    p.add_argument("--command", default="", help="with --record-submission: the command line to record")
    p.add_argument("--kind", default="grid.sh", help="with --record-submission: who submitted")


def plan(args: argparse.Namespace, runs: list[RunConfig], out: str, retry: bool) -> int:
    """--plan-arrays: the manifest with its tasks and arrays, and one line per array for grid.sh."""
    if not args.write_manifest:
        raise ConfigError("--plan-arrays", True, "with --write-manifest FILE")
    if args.runs_per_task < 1:
        raise ConfigError("--runs-per-task", args.runs_per_task, "a positive integer")
    if args.max_submit_jobs < 0:
        raise ConfigError("--max-submit-jobs", args.max_submit_jobs, "a positive integer, or 0 for the site's limit")
    tasks, arrays = plan_submission(runs, out, pending(runs, out, retry), runs_per_task=args.runs_per_task,
                                    max_array_size=args.max_array_size, max_parallel=args.max_parallel,
                                    max_submit_jobs=args.max_submit_jobs,
                                    time_factor=args.time_factor, mem_factor=args.mem_factor,
                                    max_attempts=args.max_attempts, partition=args.partition)
    write_manifest(args.write_manifest, runs, out, retry, source=args.spec or args.manifest,
                   extra=manifest_plan(tasks, arrays))
    if arrays:
        print(plan_lines(arrays))
    return 0


def task_indices(manifest: Optional[str], task: int) -> list[int]:
    """The run indices of task `task` of a manifest's plan (a manifest without plan: task i = run i)."""
    if not manifest:
        raise ConfigError("--task", task, "with --manifest FILE")
    data = json.loads(Path(manifest).read_text())  # load_runs checked it; only the plan is read here
    tasks = data.get("tasks") or [[i] for i in range(len(data["runs"]))]
    if not 0 <= task < len(tasks):
        raise ConfigError("--task", task, f"a task in 0..{len(tasks) - 1}")
    return tasks[task]


def load_runs(args: argparse.Namespace) -> tuple[list[RunConfig], str, bool]:
    """The runs, results directory and retry flag from a spec (+ --set), all checked, or a manifest.

    A manifest's runs were checked when it was written; an array task does not check them again.
    """
    if args.manifest:
        if args.spec or args.set:
            raise ConfigError("--manifest", args.manifest, "no spec and no --set (its runs are already resolved)")
        runs, data = read_manifest(args.manifest)
        return runs, args.out or data["out"], args.retry_failed or data["retry_failed"]
    if not args.spec:
        raise ConfigError("spec", None, "a jobs/*.yaml file or --manifest FILE")
    placement = Placement(ranks=args.tasks_per_run or dist.from_environ().world_size, gpus=args.gpus_per_run)
    return expand_checked(load_spec(args.spec, args.set), placement), args.out or "results", args.retry_failed


def list_runs(runs: list[RunConfig], out: str) -> int:
    keys = varying_keys(runs)
    names = {None: "missing", "completed": "done", "corrupt": "missing"}
    statuses = run_statuses(runs, out)
    for i, (cfg, status) in enumerate(zip(runs, statuses)):
        print(f"{i:4d}  {run_id(cfg)}  {names.get(status, status):8s}  {describe(cfg, keys)}")
    done, failed = sum(s == "completed" for s in statuses), sum(s == "failed" for s in statuses)
    running = sum(s == "running" for s in statuses)
    print(f"{len(runs)} runs: {done} done, {failed} failed, {running} running, "
          f"{len(runs) - done - failed - running} to do")
    return 0


def describe(cfg: RunConfig, keys: list[str]) -> str:
    flat = flatten(cfg.to_dict())
    return " ".join(f"{k}={flat.get(k)}" for k in keys)


if __name__ == "__main__":
    sys.exit(main())
