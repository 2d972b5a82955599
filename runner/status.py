"""`python -m runner.status SPEC_OR_RESULTS_DIR`: every run's state, reconciled with SLURM.

One row per run: completed, failed, running, pending, requeued, preempted, timeout,
out_of_memory, node_fail, cancelled, stopped or missing, with its job (array task),
attempts, elapsed time, node, SLURM output file, last checkpointed epoch and failure
reason; then a summary line. The jobs are those RESULTS/submissions.jsonl records
(slurm/grid.sh, runner.submit, slurm/tune.sh); without SLURM the files alone decide.

    python -m runner.status results                        # every run the directory knows
    python -m runner.status jobs/x.yaml --out results      # the spec's runs, in order (missing too)
    python -m runner.status results --failed               # failures grouped by reason
    python -m runner.status results --state timeout --where loss.name=TripletMarginLoss --cancel --dry-run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from runner.cli import add_set_option, command
from runner.config import ConfigError, flatten, run_id
from runner.launch import slurm_jobs, status
from runner.launch.revision import submission_provenance
from runner.store import catalog, submissions


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runner.status", description=__doc__.splitlines()[0])
    p.add_argument("target", help="a results directory, or a jobs/*.yaml spec (with --out)")
    add_set_option(p, help="with a spec: override for every run")
    p.add_argument("--out", default=None, help="with a spec: its results directory (default: results)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="only runs with this setting")
    p.add_argument("--state", default="", help="only runs in these states, comma-separated (e.g. timeout,failed)")
    p.add_argument("--failed", action="store_true", help="group the failures by reason, with their run_ids")
    p.add_argument("--json", action="store_true", help="rows and counts as JSON")
    p.add_argument("--cancel", action="store_true", help="scancel the matching runs' queued or running tasks")
    p.add_argument("--dry-run", action="store_true", help="with --cancel: print what would be cancelled")
    p.add_argument("--reindex", action="store_true", help="rebuild RESULTS/index.sqlite from the run.h5 files")
    p.add_argument("--no-slurm", action="store_true", help="ignore SLURM: the files alone")
    p.add_argument("--record-job", metavar="JOB_ID", help="append a submission record for this job (slurm/tune.sh)")
    p.add_argument("--command", default="", help="with --record-job: the command line to record")
    args = p.parse_args(argv)
    args.where = [tuple(w.split("=", 1)) for w in args.where]
    if any(len(w) != 2 for w in args.where):
        raise ConfigError("--where", args.where, "KEY=VALUE, e.g. loss.name=TripletMarginLoss")
    args.state = {s for s in args.state.split(",") if s}
    if args.state - set(status.STATES):
        raise ConfigError("--state", ",".join(sorted(args.state - set(status.STATES))), f"one of {status.STATES}")
    return args


@command
def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    out, runs = target_runs(args)
    if args.record_job:
        submissions.append_submission(out, {"kind": "tune.sh", "command": args.command, "out": str(out.resolve()),
                                            "jobs": [{"job_id": args.record_job}], **submission_provenance(out)})
        return 0
    if args.reindex:
        print(f"{catalog.rebuild(out)} runs indexed in {catalog.catalog_path(out)}")
    rows = [r for r in status.collect(out, runs, use_slurm=not args.no_slurm)
            if status.matches(r, args.where, args.state)]
    if args.cancel:
        return cancel(rows, args.dry_run)
    if args.json:
        print(status.as_json(rows))
    elif args.failed:
        for reason, ids in status.failures_by_reason(rows).items():
            print(f"{len(ids):5d}  {reason}\n       {' '.join(ids)}")
    else:
        print_rows(rows)
    if not args.json:
        print(status.summary_line(rows))
    return 0


def target_runs(args: argparse.Namespace) -> tuple[Path, Optional[list[tuple[str, dict]]]]:
    """(results directory, the spec's (run_id, flat config) in order, or None for every run it knows)."""
    target = Path(args.target)
    if target.is_dir():
        return target, None
    if not target.is_file():
        raise ConfigError("target", args.target, "a results directory or a spec file")
    from runner.spec import expand_grid, load_spec  # imports torch (~2 s): only a spec needs it, a directory not
    runs = expand_grid(load_spec(target, args.set))
    return Path(args.out or "results"), [(run_id(cfg), flatten(cfg.to_dict())) for cfg in runs]


def print_rows(rows: list[status.RunState]) -> None:
    print(f"{'#':>5}  {'run_id':12}  {'state':13}  {'job':12}  {'att':>3}  {'elapsed':>8}  {'node':10}  "
          f"{'epoch':>5}  output / reason")
    for r in rows:
        elapsed = slurm_jobs.format_time(r.elapsed_s)[:-3] if r.elapsed_s is not None else ""
        detail = "  ".join(x for x in (r.output, r.reason.splitlines()[0][:100] if r.reason else "") if x)
        print(f"{'' if r.index is None else r.index:>5}  {r.run_id:12}  {r.state:13}  {r.job:12}  {r.attempts:>3}  "
              f"{elapsed:>8}  {r.node[:10]:10}  {'' if r.last_epoch is None else r.last_epoch:>5}  {detail}")


def cancel(rows: list[status.RunState], dry_run: bool) -> int:
    """scancel exactly the queued or running array tasks of these runs."""
    live = slurm_jobs.QUEUED | slurm_jobs.ACTIVE | {"REQUEUED"}
    tasks = sorted({r.job for r in rows if r.job and r.slurm_state in live})
    if not tasks:
        print("nothing to cancel: no matching run is queued or running")
        return 0
    print(("would cancel " if dry_run else "cancelling ") + f"{len(tasks)} task(s): {' '.join(tasks)}")
    if dry_run:
        return 0
    error = slurm_jobs.cancel(tasks)
    if error:
        print(f"scancel: {error}", file=sys.stderr)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
