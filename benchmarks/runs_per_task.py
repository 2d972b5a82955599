"""`--runs-per-task 10` vs 1 on 20 tiny runs: the per-run overhead one Python start per task removes.

    python benchmarks/runs_per_task.py [--runs 20] [--per-task 10] [--dir /tmp/rpt-bench]

The runs of a spec (tiny digits CNN, 1 epoch) are planned as array tasks (`runner.grid
--write-manifest M --plan-arrays --runs-per-task K`, what slurm/grid.sh does), then every
task runs as an array task runs it, `python -m runner.grid --manifest M --task T`, one
after another in fresh processes on this machine (no scheduler: its queueing would be
counted too). Reference: the same runs with K = 1, timed in the same run. Overhead = wall
time minus the runs' own `wall_time_s` (set-up, training, evaluation, writing run.h5).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner import store  # noqa: E402  (the checkout, not an installed copy)


def write_spec(path: Path, runs: int) -> Path:
    spec = {"name": "rpt", "model": {"width": 8}, "embedding": {"dim": 8},
            "train": {"epochs": 1, "batch_size": 32, "num_threads": 1}, "seeds": list(range(runs))}
    path.write_text(yaml.safe_dump(spec))
    return path


def run(cmd: list[str]) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-1500:]}")
    return p.stdout


def time_tasks(spec: Path, base: Path, per_task: int) -> tuple[float, float, int]:
    """(wall time of every task one after another, sum of the runs' wall_time_s, tasks) with K = per_task."""
    out = base / f"k{per_task}"
    shutil.rmtree(out, ignore_errors=True)
    manifest = out / "manifest.json"
    run([sys.executable, "-m", "runner.grid", str(spec), "--out", str(out), "--write-manifest", str(manifest),
         "--plan-arrays", "--runs-per-task", str(per_task), "--max-array-size", "1000", "--max-submit-jobs", "1000"])
    data = json.loads(manifest.read_text())
    t0 = time.perf_counter()
    for task in range(len(data["tasks"])):
        run([sys.executable, "-m", "runner.grid", "--manifest", str(manifest), "--task", str(task)])
    wall = time.perf_counter() - t0
    fits = [store.read_attrs(store.run_path(out, r["run_id"])) for r in data["runs"]]
    if any(a.get("status") != "completed" for a in fits):
        raise RuntimeError(f"not every run completed with --runs-per-task {per_task}")
    return wall, sum(a["wall_time_s"] for a in fits), len(data["tasks"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--per-task", type=int, default=10)
    p.add_argument("--dir", default="/tmp/rpt-bench")
    args = p.parse_args(argv)
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    spec = write_spec(base / "spec.yaml", args.runs)
    rows = {}
    for k in (1, args.per_task):
        wall, fit, tasks = time_tasks(spec, base, k)
        rows[k] = (wall, fit)
        print(f"--runs-per-task {k:2d}: {args.runs} runs in {tasks} tasks, {wall:.1f} s "
              f"({wall / args.runs:.2f} s per run; runs' own wall_time_s {fit / args.runs:.2f} s, "
              f"overhead {(wall - fit) / args.runs:.2f} s per run)")
    (w1, f1), (wk, fk) = rows[1], rows[args.per_task]
    print(f"per-run overhead removed by --runs-per-task {args.per_task}: {((w1 - f1) - (wk - fk)) / args.runs:.2f} s "
          f"per run; wall time {wk / w1:.2f}x that of --runs-per-task 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
