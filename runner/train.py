"""`python -m runner.train [SPEC] [--set key=value ...] --out DIR`: one run, 1 or N ranks.

The run writes DIR/runs/<run_id>/: run.h5 (results, see docs/hdf5.md), checkpoint.pt
while it trains, model.pt when done, and tb/ for TensorBoard. A run whose run.h5
says `completed` is skipped; a checkpoint of the same run_id is resumed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from runner import dist
from runner.cli import add_set_option, command
from runner.config import run_id
from runner.launch.run import run_one
from runner.launch.summary import format_result
from runner.launch.validate import Placement, validate_run
from runner.spec import load_config
from runner.store import RunLocked


@command
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.train", description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", help="jobs/*.yaml (its base settings); defaults: digits, triplet + semi-hard")
    add_set_option(p)
    p.add_argument("--out", default="results", help="results directory (default: results)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and run_id, then exit")
    args = p.parse_args(argv)
    cfg = load_config(args.spec, args.set)
    if args.print_config:
        print(json.dumps({"run_id": run_id(cfg), **cfg.to_dict()}, indent=2))
        return 0
    # every check of a grid's runs (data files, model × image size, weights, device), before a run directory exists
    validate_run(cfg, Placement(ranks=dist.from_environ().world_size))
    try:
        result = run_one(cfg, args.out)
    except RunLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if dist.from_environ().is_main:
        print(format_result(result))
    return 0 if result["status"] in ("completed", "interrupted") else 1


if __name__ == "__main__":
    sys.exit(main())
