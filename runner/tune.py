"""`python -m runner.tune SPEC --num-samples N`: Ray Tune search with ASHA over a spec's `search:`.

Each trial is one run of runner.train (`run_one`) whose epoch callback reports to Tune, so
trials land in OUT/runs/<run_id>/run.h5 like grid runs; a trial that ASHA ends early is
recorded as `stopped` with `stopped_epoch`. Ray's own files go to OUT/tune/. See docs/tune.md.

  search:                                   tune:
    train.lr: {loguniform: [1.0e-4, 1.0e-2]}  metric: val_map_at_r   (or val_knn1; mode max)
    loss.margin: {uniform: [0.05, 0.5]}       max_epochs / grace_period / reduction_factor
    embedding.dim: {choice: [16, 32, 64]}     cpus_per_trial, gpus_per_trial, workers_per_trial
    model.width: {int: [8, 32]}               val_fraction (when data.val_fraction is 0)
Ray is imported only after the spec has been validated (runner.launch.tune).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from runner.cli import add_set_option, command
from runner.config import ConfigError
from runner.launch.tune.results import print_table, results_rows, write_results
from runner.launch.tune.space import prepare
from runner.launch.tune.trainables import build_tuner, init_ray
from runner.spec import resolve


@command
def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None) -> int:
    """CLI; `callbacks` (Ray Tune Callback objects) are for tests."""
    p = argparse.ArgumentParser(prog="python -m runner.tune", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="jobs/*.yaml with a search: section")
    add_set_option(p, help="override for every trial")
    p.add_argument("--out", default="results", help="results directory (default: results)")
    p.add_argument("--num-samples", type=int, default=10, help="trials to sample (default: 10)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials running at once (default: as resources allow)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for a local Ray (default: all cores)")
    p.add_argument("--address", default=None, help="join a running Ray cluster (host:port) instead of starting one")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in OUT/tune/<name>")
    args = p.parse_args(argv)
    name, base, space, settings = prepare(args.spec, args.set)
    if args.num_samples < 1:
        raise ConfigError("--num-samples", args.num_samples, "an integer >= 1")
    import ray  # optional dependency: only once the spec is known to be valid
    out = str(Path(args.out).resolve())
    started = init_ray(args.address, args.num_cpus)
    try:
        tuner = build_tuner(name, base, space, settings, out, args.num_samples, args.max_concurrent, args.resume,
                            callbacks)
        t0 = time.perf_counter()
        tuner.fit()
        print(f"search wall time {time.perf_counter() - t0:.0f} s")
        max_t = resolve(base).train.epochs
        rows = results_rows(str(Path(out, "tune", name)), space, settings, out)
        print_table(rows, max_t)
        csv_path, best_path = write_results(rows, base, out, name, settings.metric)
        print(f"results: {csv_path}\nbest config: {best_path}")
        if any(r["status"] == "unfinished" for r in rows):
            print("search interrupted: continue it with --resume", file=sys.stderr)
            return 130
        return 0 if best_path else 1
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
