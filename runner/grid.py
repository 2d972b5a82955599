"""`python -m runner.grid SPEC`: expand an experiment spec into runs, list them, run them.

The spec's sections are described in runner.spec.expand (and jobs/exercise.yaml).
Every expanded run is resolved and validated before anything is submitted.
Launchers (slurm/grid.sh, runner.submit) freeze the expansion into a manifest
(--write-manifest FILE): array task i then runs `--manifest FILE --run-index i`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from runner.cli import add_set_option, command
from runner.config import ConfigError, RunConfig, flatten, run_id
from runner import dist
from runner.launch.many import array_ranges, pending, run_indices, run_statuses
from runner.launch.validate import Placement, expand_checked
from runner.spec import expand_grid, load_spec, read_manifest, write_manifest  # noqa: F401 (grid.expand_grid)


@command
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.grid", description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", help="jobs/*.yaml (or --manifest FILE)")
    add_set_option(p, help="override for every run")
    p.add_argument("--out", default=None, help="results directory (default: results, or the manifest's)")
    p.add_argument("--manifest", help="read the runs from a manifest instead of a spec")
    p.add_argument("--write-manifest", metavar="FILE", help="freeze the expanded runs into FILE (JSON)")
    p.add_argument("--list", action="store_true", help="list runs with run_id and status (done/failed/missing)")
    p.add_argument("--pending", action="store_true", help="print the indices of runs still to do, comma-separated")
    p.add_argument("--array", action="store_true", help="print the sbatch --array value of the pending runs")
    p.add_argument("--max-parallel", type=int, default=0, help="with --array: the %% throttle (0: none)")
    p.add_argument("--run-index", type=int, action="append", help="run the run(s) at this index (array tasks)")
    p.add_argument("--run", action="store_true", help="run every pending run here, one after another")
    p.add_argument("--retry-failed", action="store_true", help="also rerun runs recorded as failed")
    p.add_argument("--tasks-per-run", type=int, default=None,
                   help="for the checks: DDP ranks each run will have (default: this process's; grid.sh passes it)")
    p.add_argument("--gpus-per-run", type=int, default=None,
                   help="for the checks: GPUs each run will have (default: those visible here; grid.sh passes it)")
    args = p.parse_args(argv)
    runs, out, retry = load_runs(args)
    if args.write_manifest:
        write_manifest(args.write_manifest, runs, out, retry, source=args.spec or args.manifest)
    if args.list:
        return list_runs(runs, out)
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
    return run_indices(runs, indices, out, retry)


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


def varying_keys(runs: list[RunConfig]) -> list[str]:
    """Config keys whose value differs between runs (what a listing should show)."""
    flats = [flatten(r.to_dict()) for r in runs]
    keys = list(flats[0]) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


if __name__ == "__main__":
    sys.exit(main())
