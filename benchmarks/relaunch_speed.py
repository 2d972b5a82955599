"""Relaunching a finished 10,000-run grid: `python -m runner.grid SPEC --run` must skip every run.

    python benchmarks/relaunch_speed.py [--runs 10000] [--dir /tmp/relaunch-bench]

A spec of --runs tiny digits runs (4 embedding dims x seeds); one completed run.h5 per run
(tiny final embeddings, written without training) and RESULTS/index.sqlite, written once.
Then the command as a user types it, in a fresh process, must print `nothing to do` (timed
twice, with the catalog and after deleting it). Target: under 10 s for 10,000 runs.
Reference: `python -c "import runner.losses"`, the interpreter, torch and PML, which
validating any spec needs, timed in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner import store  # noqa: E402  (the checkout, not an installed copy)
from runner.config import run_id  # noqa: E402
from runner.spec import expand_grid, load_spec  # noqa: E402
from runner.store import catalog  # noqa: E402
from benchmarks.timing import timed  # noqa: E402

DIMS = (8, 16, 32, 64)


def write_spec(path: Path, runs: int) -> Path:
    spec = {"name": "relaunch", "model": {"width": 8}, "train": {"epochs": 1, "batch_size": 32, "num_threads": 1},
            "grid": {"embedding.dim": list(DIMS), "seed": list(range(-(-runs // len(DIMS))))}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def write_finished(out: Path, spec: Path) -> int:
    """A completed run.h5 for every run of the spec that has none; the catalog rebuilt when any was written."""
    written = 0
    for cfg in expand_grid(load_spec(spec)):
        rid = run_id(cfg)
        path = store.run_path(out, rid)
        if path.exists():
            continue
        final = {s: {"embeddings": np.zeros((4, cfg.embedding.dim), np.float32), "labels": np.arange(4),
                     "index": np.arange(4)} for s in ("train", "test")}
        store.write_run(path, store.RunRecord(run_id=rid, config=cfg.to_dict(), status="completed",
                                              attrs={"seed": cfg.seed, "metrics": {"map_at_r": 0.5},
                                                     "wall_time_s": 30.0}, final=final))
        written += 1
    if written or not catalog.catalog_path(out).exists():
        catalog.rebuild(out)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10000)
    p.add_argument("--dir", default="/tmp/relaunch-bench")
    args = p.parse_args(argv)
    base = Path(args.dir) / f"runs{args.runs}"
    spec, out = write_spec(base / "spec.yaml", args.runs), base / "results"
    t0 = time.perf_counter()
    written = write_finished(out, spec)
    if written:
        print(f"wrote {written} completed run.h5 and the catalog in {time.perf_counter() - t0:.0f} s")
    t_ref, _ = timed([sys.executable, "-c", "import runner.losses"])
    relaunch = [sys.executable, "-m", "runner.grid", str(spec), "--out", str(out), "--run"]
    t_cat, line = timed(relaunch)
    if not line.startswith("nothing to do"):
        raise RuntimeError(f"the relaunch of a finished grid did not skip every run: {line}")
    print(f"runner.grid --run, {args.runs} finished runs, with index.sqlite: {t_cat:.2f} s  ({line})")
    for suffix in ("", "-wal", "-shm"):
        (out / f"index.sqlite{suffix}").unlink(missing_ok=True)
    t_files, line = timed(relaunch)
    if not line.startswith("nothing to do"):
        raise RuntimeError(f"the relaunch of a finished grid did not skip every run: {line}")
    print(f"runner.grid --run, {args.runs} finished runs, no catalog: {t_files:.2f} s")
    print(f"reference: python -c 'import runner.losses': {t_ref:.2f} s  "
          f"(relaunch / reference: {t_cat / t_ref:.1f}x with the catalog, {t_files / t_ref:.1f}x without)")
    catalog.rebuild(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
